"""The events the scripts append to each partition's stream, and how they replay to counters.

Every event carries the change it made to its SKU's counters (``da dr ds dt``: available, reserved, sold,
total), so summing a SKU's deltas from the start of its stream gives its counters: the stream is the log,
Redis's counters and PostgreSQL's rows are two materialisations of it.
"""

from __future__ import annotations

from typing import Any

import msgspec

EVENT_SCHEMA_VERSION = 1


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One stream entry. ``id`` is ``<partition>-<stream id>``: stable, unique, ordered per partition."""

    id: str
    partition: int
    stream_id: str
    type: str
    sku: str
    at: int
    da: int
    dr: int
    ds: int
    dt: int
    reservation_id: str | None = None
    order_id: str | None = None
    user: str | None = None
    quantity: int | None = None
    status: str | None = None
    order_status: str | None = None
    expires_at: int | None = None
    unit_price_cents: int | None = None
    total_cents: int | None = None
    payment_method: str | None = None
    transaction_id: str | None = None
    reason: str | None = None
    # sale_loaded / restocked
    name: str | None = None
    price_cents: int | None = None
    flash_price_cents: int | None = None
    total: int | None = None
    per_user_limit: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    reservation_ttl_ms: int | None = None
    paused: bool | None = None
    schema_version: int = EVENT_SCHEMA_VERSION


def parse_entry(partition: int, stream_id: str, fields: dict[str, Any]) -> Event:
    """Decodes one XRANGE/XREAD entry of a partition's stream."""
    data = dict(fields)
    data["id"] = f"{partition}-{stream_id}"
    data["partition"] = partition
    data["stream_id"] = stream_id
    return msgspec.convert(data, Event, strict=False)


class Counters(msgspec.Struct, kw_only=True):
    total: int = 0
    available: int = 0
    reserved: int = 0
    sold: int = 0

    def apply(self, event: Event) -> None:
        self.available += event.da
        self.reserved += event.dr
        self.sold += event.ds
        self.total += event.dt


def replay(events: list[Event]) -> dict[str, Counters]:
    """The counters per SKU that a sequence of events from the start of the streams adds up to."""
    counters: dict[str, Counters] = {}
    for event in events:
        counters.setdefault(event.sku, Counters()).apply(event)
    return counters
