"""The Kafka messages the worker publishes: JSON bodies described by msgspec structs, key = SKU id.

Each event goes to the topics it concerns (table below). Every body carries ``event_id`` (stable and
unique: ``<partition>-<stream id>``, so consumers drop repeats of at-least-once delivery) and
``schema_version`` (bumped on any incompatible change).

    event             reservations  orders  inventory-updates
    sale_loaded                               x
    restocked                                 x
    reserved              x                   x
    released              x                   x
    expired               x         (x)       x      (orders too when a checkout was abandoned)
    checkout_started                x
    checkout_failed                 x
    confirmed             x         x         x
    order_cancelled                 x         x
    order_fulfilled                 x
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
from flashsale.engine.events import Event

SCHEMA_VERSION = 1


class ReservationMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Topic flash-sale-reservations: a reservation's lifecycle (RESERVED, CONFIRMED, CANCELLED, EXPIRED)."""

    event_id: str
    schema_version: int
    type: str
    sku_id: str
    reservation_id: str
    user_id: str
    quantity: int
    status: str
    at: int
    expires_at: int | None = None
    order_id: str | None = None


class OrderMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Topic flash-sale-orders: an order's lifecycle (PENDING, CONFIRMED, FAILED, FULFILLED, CANCELLED)."""

    event_id: str
    schema_version: int
    type: str
    sku_id: str
    order_id: str
    reservation_id: str
    user_id: str
    status: str
    at: int
    quantity: int | None = None
    unit_price_cents: int | None = None
    total_price_cents: int | None = None
    payment_method: str | None = None
    transaction_id: str | None = None
    failure_reason: str | None = None


class InventoryMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Topic flash-sale-inventory-updates: a change of a SKU's counters (deltas; settings on sale_loaded)."""

    event_id: str
    schema_version: int
    type: str
    sku_id: str
    at: int
    available_delta: int
    reserved_delta: int
    sold_delta: int
    total_delta: int
    total: int | None = None
    name: str | None = None
    price_cents: int | None = None
    flash_price_cents: int | None = None
    per_user_limit: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    reservation_ttl_ms: int | None = None
    paused: bool | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    reservations: str
    orders: str
    inventory: str


_RESERVATION_STATUS = {"reserved": "RESERVED", "confirmed": "CONFIRMED"}
_ORDER_STATUS = {
    "checkout_started": "PENDING",
    "checkout_failed": "FAILED",
    "confirmed": "CONFIRMED",
    "order_cancelled": "CANCELLED",
    "order_fulfilled": "FULFILLED",
}
_ENCODER = msgspec.json.Encoder()


def messages(event: Event, topics: Topics) -> Iterator[tuple[str, bytes]]:
    """(topic, JSON body) for each topic the event goes to, in a fixed order."""
    e = event
    if e.reservation_id and e.type in ("reserved", "released", "expired", "confirmed"):
        yield (
            topics.reservations,
            _ENCODER.encode(
                ReservationMessage(
                    event_id=e.id,
                    schema_version=SCHEMA_VERSION,
                    type=e.type,
                    sku_id=e.sku,
                    reservation_id=e.reservation_id,
                    user_id=e.user or "",
                    quantity=e.quantity or 0,
                    status=e.status or _RESERVATION_STATUS[e.type],
                    at=e.at,
                    expires_at=e.expires_at,
                    order_id=e.order_id,
                )
            ),
        )
    if e.order_id and (e.type in _ORDER_STATUS or e.type == "expired"):
        status = e.order_status or _ORDER_STATUS.get(e.type, "FAILED")
        reason = e.reason if e.type == "checkout_failed" else None
        if e.type == "expired":
            reason = "CHECKOUT_TIMEOUT"
        yield (
            topics.orders,
            _ENCODER.encode(
                OrderMessage(
                    event_id=e.id,
                    schema_version=SCHEMA_VERSION,
                    type=e.type,
                    sku_id=e.sku,
                    order_id=e.order_id,
                    reservation_id=e.reservation_id or "",
                    user_id=e.user or "",
                    status=status,
                    at=e.at,
                    quantity=e.quantity,
                    unit_price_cents=e.unit_price_cents,
                    total_price_cents=e.total_cents,
                    payment_method=e.payment_method,
                    transaction_id=e.transaction_id,
                    failure_reason=reason,
                )
            ),
        )
    if e.da or e.dr or e.ds or e.dt or e.type in ("sale_loaded", "restocked"):
        yield (
            topics.inventory,
            _ENCODER.encode(
                InventoryMessage(
                    event_id=e.id,
                    schema_version=SCHEMA_VERSION,
                    type=e.type,
                    sku_id=e.sku,
                    at=e.at,
                    available_delta=e.da,
                    reserved_delta=e.dr,
                    sold_delta=e.ds,
                    total_delta=e.dt,
                    total=e.total,
                    name=e.name,
                    price_cents=e.price_cents,
                    flash_price_cents=e.flash_price_cents,
                    per_user_limit=e.per_user_limit,
                    starts_at=e.starts_at,
                    ends_at=e.ends_at,
                    reservation_ttl_ms=e.reservation_ttl_ms,
                    paused=e.paused,
                )
            ),
        )
