"""The events: what the scripts append to each partition's stream, and what each one means. One place.

An entry of ``fs:{pN}:events`` has one field, ``e``: a JSON array ``[type, sku, at, ...]`` (``at``: the
script's clock, ms) whose further positions per type are ``LAYOUT`` (the Lua scripts write them in that
order). The entry's stream id gives its place in the partition; ``<partition>-<stream id>`` is its stable id.

``effect(event)`` says what an event does: how it moves its SKU's counters and the user's counts, and which
fields of which reservation, order and product it sets. Everything that reads the log goes through it: the
worker's PostgreSQL batches (``Fold``), the Kafka messages, reconcile's checks and its Redis rebuild. A new
event type is one entry in ``EventType``, ``LAYOUT`` and ``effect`` (and the script that emits it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

EVENT_SCHEMA_VERSION = 2


class EventType(StrEnum):
    SALE_LOADED = "sale_loaded"
    RESTOCKED = "restocked"
    RESERVED = "reserved"
    RELEASED = "released"
    EXPIRED = "expired"
    CHECKOUT_STARTED = "checkout_started"
    CHECKOUT_FAILED = "checkout_failed"
    CHECKOUT_CANCELLED = "checkout_cancelled"
    CONFIRMED = "confirmed"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_FULFILLED = "order_fulfilled"
    WAITING_ROOM_SET = "waiting_room_set"
    QUEUE_ADMITTED = "queue_admitted"
    QUEUE_CLOSED = "queue_closed"
    # A hot SKU's stock buckets (engine/buckets.py): a bucket other than 0 made or changed, and units
    # moved between buckets (withdrawn from one, deposited into another).
    BUCKET_SET = "bucket_set"
    TRANSFERRED_OUT = "transferred_out"
    TRANSFERRED_IN = "transferred_in"


# What each event's array holds after [type, sku, at], in order.
_PRICES = ("name", "price_cents", "flash_price_cents")
_RULES = ("per_user_limit", "starts_at", "ends_at", "reservation_ttl_ms", "paused")
LAYOUT: dict[EventType, tuple[str, ...]] = {
    EventType.SALE_LOADED: ("delta", *_PRICES, "total", *_RULES),
    EventType.RESTOCKED: ("delta", "total"),
    # A hold expires at `at` + its ttl: the ttl is shorter to carry than the moment. Its id comes without
    # the "rsv_<partition>_" that the stream's partition gives (the most frequent event: bytes count).
    EventType.RESERVED: ("reservation_id", "user", "quantity", "ttl_ms"),
    EventType.RELEASED: ("reservation_id", "user", "quantity", "order_id"),
    EventType.EXPIRED: ("reservation_id", "user", "quantity", "order_id"),
    EventType.CHECKOUT_STARTED: (
        "reservation_id",
        "order_id",
        "user",
        "quantity",
        "unit_price_cents",
        "payment_method",
        "pay_until",
    ),
    EventType.CHECKOUT_FAILED: ("reservation_id", "order_id", "user", "reason"),
    EventType.CHECKOUT_CANCELLED: ("reservation_id", "order_id", "user", "quantity"),
    EventType.CONFIRMED: ("reservation_id", "order_id", "user", "quantity", "transaction_id"),
    EventType.ORDER_CANCELLED: ("reservation_id", "order_id", "user", "quantity"),
    EventType.ORDER_FULFILLED: ("reservation_id", "order_id", "user"),
    # A waiting room's settings; then, per admitter step, who it let in, and how many it sent away when
    # the SKU sold out. Joining the line is no event (lua/queue_join.lua says why).
    EventType.WAITING_ROOM_SET: (
        "waiting_room",
        "opens_at",
        "admit_per_s",
        "stock_factor",
        "admission_ttl_ms",
    ),
    EventType.QUEUE_ADMITTED: ("count", "users"),
    EventType.QUEUE_CLOSED: ("count",),
    EventType.BUCKET_SET: ("bucket", "buckets", *_PRICES, *_RULES),
    EventType.TRANSFERRED_OUT: ("transfer_id", "from_bucket", "to_bucket", "quantity"),
    EventType.TRANSFERRED_IN: ("transfer_id", "from_bucket", "to_bucket", "quantity"),
}


class UnknownEvent(ValueError):
    """An entry this code cannot read: an unknown type (a newer engine wrote it) or a malformed body."""


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One stream entry, decoded; ``id`` (``<partition>-<stream id>``) is stable and ordered per partition."""

    id: str
    partition: int
    stream_id: str
    type: EventType
    sku: str
    at: int  # ms, the clock of the script that made it
    # Present as LAYOUT says for the type; None otherwise.
    reservation_id: str | None = None
    order_id: str | None = None
    user: str | None = None
    quantity: int | None = None
    expires_at: int | None = None
    pay_until: int | None = None
    unit_price_cents: int | None = None
    payment_method: str | None = None
    transaction_id: str | None = None
    reason: str | None = None
    delta: int | None = None
    total: int | None = None
    name: str | None = None
    price_cents: int | None = None
    flash_price_cents: int | None = None
    per_user_limit: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    reservation_ttl_ms: int | None = None
    paused: bool | None = None
    waiting_room: bool | None = None
    opens_at: int | None = None
    admit_per_s: int | None = None
    stock_factor: int | None = None
    admission_ttl_ms: int | None = None
    count: int | None = None
    users: list[str] | None = None
    bucket: int | None = None
    buckets: int | None = None
    transfer_id: str | None = None
    from_bucket: int | None = None
    to_bucket: int | None = None


_decode_body = msgspec.json.Decoder(list[Any]).decode


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ("<ms>-<seq>") as a sortable pair: ids compare by number, not as text."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _whole_id(partition: int, rid: str) -> str:
    """A hold's id as its reserved event carries it: without the "rsv_<partition>_" its stream already says
    (16 characters, engine.keys), or whole (streams written before, and tests)."""
    if len(rid) == 16 or not rid.startswith("rsv_"):
        return f"rsv_{partition}_{rid}"
    return rid


def parse_entry(partition: int, stream_id: str, fields: dict[str, Any]) -> Event:
    """Decodes one XRANGE/XREAD entry of a partition's stream; UnknownEvent when it cannot."""
    event_id = f"{partition}-{stream_id}"
    try:
        body = _decode_body(fields["e"])
        kind = EventType(body[0])
        values = dict(zip(LAYOUT[kind], body[3:], strict=True))
        for flag in ("paused", "waiting_room"):
            if flag in values:
                values[flag] = bool(values[flag])
        if "ttl_ms" in values:
            values["expires_at"] = int(body[2]) + int(values.pop("ttl_ms"))
        if kind is EventType.RESERVED:
            values["reservation_id"] = _whole_id(partition, str(values["reservation_id"]))
        return Event(
            id=event_id,
            partition=partition,
            stream_id=stream_id,
            type=kind,
            sku=body[1],
            at=int(body[2]),
            **values,
        )
    except (KeyError, IndexError, ValueError, TypeError, msgspec.DecodeError) as error:
        raise UnknownEvent(f"event {event_id} cannot be read ({error}): {fields!r:.300}") from None


# -- what an event means -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    """An event's whole effect. Counter deltas are on its SKU; held/bought on (its SKU, its user).
    ``reservation``/``order``/``product``: the fields it sets on that record (``*_created``: it creates it).
    """

    available: int = 0
    reserved: int = 0
    sold: int = 0
    total: int = 0
    # Units withdrawn from one stock bucket and not yet deposited into another (engine/buckets.py).
    moving: int = 0
    held: int = 0
    bought: int = 0
    reservation: dict[str, Any] | None = None
    reservation_created: bool = False
    order: dict[str, Any] | None = None
    order_created: bool = False
    product: dict[str, Any] | None = None
    # A product (and inventory row) to create when missing, never to change: a stock bucket's settings
    # copy, whose partition may be applied before the SKU's own (bucket 0's sale_loaded sets the product).
    product_if_missing: dict[str, Any] | None = None
    # A waiting room's settings it sets; shoppers it admitted, and sent away (sold out).
    waiting_room: dict[str, Any] | None = None
    admitted: int = 0
    sent_away: int = 0


def _q(e: Event) -> int:
    if e.quantity is None:
        raise UnknownEvent(f"event {e.id} ({e.type}) lacks its quantity")
    return e.quantity


def _settings(e: Event, total: int | None) -> dict[str, Any]:
    """A product's fields as a sale_loaded (or a bucket's bucket_set) event sets them."""
    return {
        "name": e.name,
        "price_cents": e.price_cents,
        "flash_price_cents": e.flash_price_cents,
        "total": total,
        "per_user_limit": e.per_user_limit,
        "starts_at": e.starts_at,
        "ends_at": e.ends_at,
        "reservation_ttl_ms": e.reservation_ttl_ms,
        "paused": e.paused,
        "created_at": e.at,
        "updated_at": e.at,
    }


def effect(e: Event) -> Effect:
    """What ``e`` did: the one definition every reader of the log uses."""
    at = e.at
    match e.type:
        case EventType.SALE_LOADED:
            delta = e.delta or 0
            return Effect(available=delta, total=delta, product=_settings(e, e.total))
        case EventType.RESTOCKED:
            delta = e.delta or 0
            return Effect(available=delta, total=delta, product={"total": e.total, "updated_at": at})
        case EventType.RESERVED:
            q = _q(e)
            hold = {
                "sku": e.sku,
                "user": e.user,
                "quantity": q,
                "status": "RESERVED",
                "created_at": at,
                "expires_at": e.expires_at,
                "order_id": None,
                "pay_until": None,
                "confirmed_at": None,
                "ended_at": None,
                "updated_at": at,
            }
            return Effect(available=-q, reserved=q, held=q, reservation=hold, reservation_created=True)
        case EventType.RELEASED | EventType.EXPIRED:
            q = _q(e)
            status = "CANCELLED" if e.type == EventType.RELEASED else "EXPIRED"
            ended = {"status": status, "ended_at": at, "pay_until": None, "updated_at": at}
            # An abandoned checkout's order fails in the same step.
            failed = (
                {"status": "FAILED", "failure_reason": "CHECKOUT_TIMEOUT", "updated_at": at}
                if e.order_id
                else None
            )
            return Effect(available=q, reserved=-q, held=-q, reservation=ended, order=failed)
        case EventType.CHECKOUT_STARTED:
            q = _q(e)
            price = e.unit_price_cents or 0
            order = {
                "reservation_id": e.reservation_id,
                "sku": e.sku,
                "user": e.user,
                "quantity": q,
                "unit_price_cents": price,
                "total_cents": price * q,
                "status": "PENDING",
                "payment_method": e.payment_method,
                "transaction_id": None,
                "failure_reason": None,
                "created_at": at,
                "updated_at": at,
            }
            paying = {"order_id": e.order_id, "pay_until": e.pay_until, "updated_at": at}
            return Effect(reservation=paying, order=order, order_created=True)
        case EventType.CHECKOUT_FAILED:
            return Effect(
                reservation={"order_id": None, "pay_until": None, "updated_at": at},
                order={"status": "FAILED", "failure_reason": e.reason or "PAYMENT_FAILED", "updated_at": at},
            )
        case EventType.CHECKOUT_CANCELLED:
            q = _q(e)
            return Effect(
                available=q,
                reserved=-q,
                held=-q,
                reservation={"status": "CANCELLED", "ended_at": at, "pay_until": None, "updated_at": at},
                order={"status": "CANCELLED", "updated_at": at},
            )
        case EventType.CONFIRMED:
            q = _q(e)
            bought = {
                "status": "CONFIRMED",
                "confirmed_at": at,
                "ended_at": at,
                "pay_until": None,
                "updated_at": at,
            }
            order = {"status": "CONFIRMED", "transaction_id": e.transaction_id or "", "updated_at": at}
            return Effect(reserved=-q, sold=q, held=-q, bought=q, reservation=bought, order=order)
        case EventType.ORDER_CANCELLED:
            q = _q(e)
            return Effect(available=q, sold=-q, bought=-q, order={"status": "CANCELLED", "updated_at": at})
        case EventType.ORDER_FULFILLED:
            return Effect(order={"status": "FULFILLED", "updated_at": at})
        case EventType.WAITING_ROOM_SET:
            room = {
                "on": e.waiting_room,
                "opens_at": e.opens_at,
                "admit_per_s": e.admit_per_s,
                "stock_factor": e.stock_factor,
                "admission_ttl_ms": e.admission_ttl_ms,
                "updated_at": at,
            }
            return Effect(waiting_room=room)
        case EventType.QUEUE_ADMITTED:
            return Effect(admitted=e.count or 0, waiting_room={"updated_at": at})
        case EventType.QUEUE_CLOSED:
            return Effect(sent_away=e.count or 0, waiting_room={"updated_at": at})
        case EventType.BUCKET_SET:
            return Effect(product_if_missing={**_settings(e, 0), "buckets": e.buckets})
        case EventType.TRANSFERRED_OUT:
            q = _q(e)
            return Effect(available=-q, moving=q)
        case EventType.TRANSFERRED_IN:
            q = _q(e)
            return Effect(available=q, moving=-q)
    raise UnknownEvent(
        f"event {e.id} has no known effect ({e.type})"
    )  # pragma: no cover - enum is exhaustive


# -- many events --------------------------------------------------------------------------------------------


class Counters(msgspec.Struct, kw_only=True):
    total: int = 0
    available: int = 0
    reserved: int = 0
    sold: int = 0
    moving: int = 0

    def add(self, change: Effect) -> None:
        self.available += change.available
        self.reserved += change.reserved
        self.sold += change.sold
        self.total += change.total
        self.moving += change.moving


@dataclass(slots=True)
class Change:
    """A record's change over a run of events: the fields set (latest wins); ``created``: the run made it."""

    id: str
    created: bool
    fields: dict[str, Any]


@dataclass(slots=True)
class Fold:
    """The combined effect of a run of events of one or more partitions, in stream order."""

    counters: dict[str, Counters] = field(default_factory=dict)  # sku -> summed deltas
    users: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (sku, user) -> [held, bought]
    products: dict[str, Change] = field(default_factory=dict)
    products_if_missing: dict[str, Change] = field(default_factory=dict)  # stock buckets' settings copies
    reservations: dict[str, Change] = field(default_factory=dict)
    orders: dict[str, Change] = field(default_factory=dict)
    events_per_sku: dict[str, int] = field(default_factory=dict)
    last_at: dict[str, int] = field(default_factory=dict)  # sku -> time of its last counter change
    waiting_rooms: dict[str, Change] = field(default_factory=dict)  # sku -> its room's settings, latest
    queue_counts: dict[str, list[int]] = field(default_factory=dict)  # sku -> [admitted, sent away]

    def add(self, e: Event) -> Effect:
        change = effect(e)
        if change.available or change.reserved or change.sold or change.total or change.product is not None:
            counters = self.counters.get(e.sku)
            if counters is None:
                counters = self.counters[e.sku] = Counters()
            counters.add(change)
            self.events_per_sku[e.sku] = self.events_per_sku.get(e.sku, 0) + 1
            self.last_at[e.sku] = e.at
        if (change.held or change.bought) and e.user is not None:
            counts = self.users.setdefault((e.sku, e.user), [0, 0])
            counts[0] += change.held
            counts[1] += change.bought
        if change.product is not None:
            _merge(self.products, e.sku, change.product, e.type == EventType.SALE_LOADED)
        if change.product_if_missing is not None and e.sku not in self.products_if_missing:
            self.products_if_missing[e.sku] = Change(e.sku, True, dict(change.product_if_missing))
        if change.reservation is not None and e.reservation_id is not None:
            _merge(self.reservations, e.reservation_id, change.reservation, change.reservation_created)
        if change.order is not None and e.order_id is not None:
            _merge(self.orders, e.order_id, change.order, change.order_created)
        if change.waiting_room is not None:
            _merge(self.waiting_rooms, e.sku, change.waiting_room, e.type == EventType.WAITING_ROOM_SET)
        if change.admitted or change.sent_away:
            counts = self.queue_counts.setdefault(e.sku, [0, 0])
            counts[0] += change.admitted
            counts[1] += change.sent_away
        return change


def _merge(into: dict[str, Change], key: str, fields: dict[str, Any], created: bool) -> None:
    current = into.get(key)
    if current is None:
        into[key] = Change(key, created, dict(fields))
        return
    for name, value in fields.items():
        if name != "created_at" or name not in current.fields:  # a record is created once
            current.fields[name] = value


def fold(events: list[Event]) -> Fold:
    result = Fold()
    for event in events:
        result.add(event)
    return result


def replay(events: list[Event]) -> dict[str, Counters]:
    """The counters per SKU that a sequence of events from the start of the streams adds up to."""
    return fold(events).counters
