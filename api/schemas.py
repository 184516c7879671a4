"""The request and response types of the HTTP API: msgspec Structs with camelCase JSON names.

The same Structs decode requests, encode responses and make the OpenAPI document (``api.openapi``).
Money is a decimal string in the currency's major unit ("19.99"; the engine keeps integer cents);
times are RFC 3339 UTC strings with milliseconds; a sale bound that is not set is null.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from flashsale.engine import Order, OrderStatus, Reservation, ReservationStatus, Sale, bounds
from flashsale.engine.models import QueueStanding, QueueStatus, WaitingRoom
from msgspec import Meta

# Ids become parts of Redis key names: the engine's identifier rule.
_IDENTIFIER_RULE = "[A-Za-z0-9-_.@]{1,128}, i.e. 1-128 ASCII letters, digits, '-', '_', '.' or '@'"
Identifier = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9\-_.@]{1,128}$",
        examples=["SKU-001"],
        description=f"A SKU id or a user id: {_IDENTIFIER_RULE}.",
    ),
]
# The descriptions below document what the engine mints (engine.keys): the SKU's partition, so a lookup
# by id needs no index, then 96 random bits as 16 URL-safe base64 characters (A-Z a-z 0-9 - _).
_ENTITY_ID_RULE = (
    "<partition> is the SKU's partition (a decimal number, 0-15 with the default 16 partitions) and "
    "<random> 16 URL-safe base64 characters (96 random bits: A-Z a-z 0-9 - _)"
)
SkuId = Annotated[str, Meta(description=f"The SKU's id: {_IDENTIFIER_RULE}.", examples=["SKU-001"])]
UserId = Annotated[str, Meta(description=f"The user's id (the token's sub): {_IDENTIFIER_RULE}.")]
ReservationId = Annotated[
    str,
    Meta(
        description=f"A reservation id, rsv_<partition>_<random>: {_ENTITY_ID_RULE}.",
        examples=["rsv_3_X2k9-b7Qm_Lw0aZc"],
    ),
]
OrderId = Annotated[
    str,
    Meta(
        description=f"An order id, ord_<partition>_<random>: {_ENTITY_ID_RULE}.",
        examples=["ord_3_pQ4n_8sKj2V-yT0d"],
    ),
]
# The engine's bounds (engine/bounds.py): what passes here passes the scripts and fits every sink. A unit
# price has at most 7 digits before the point (9,999,999.99 is below MAX_PRICE_CENTS); an order's total,
# a price times a quantity, up to 13.
_PRICE_DIGITS = len(str(bounds.MAX_PRICE_CENTS // 100)) - 1
_TOTAL_DIGITS = len(str(bounds.MAX_PRICE_CENTS * bounds.MAX_PER_USER_LIMIT // 100))
Price = Annotated[str, Meta(pattern=rf"^\d{{1,{_PRICE_DIGITS}}}(\.\d{{1,2}})?$", examples=["19.99"])]
Money = Annotated[str, Meta(pattern=rf"^\d{{1,{_TOTAL_DIGITS}}}(\.\d{{1,2}})?$", examples=["19.99"])]
Quantity = Annotated[int, Meta(ge=1, le=bounds.MAX_PER_USER_LIMIT)]
PaymentMethod = Annotated[
    str, Meta(min_length=1, max_length=bounds.MAX_PAYMENT_METHOD_BYTES, examples=["CREDIT_CARD"])
]
Timestamp = Annotated[datetime, Meta(tz=True, extra_json_schema={"format": "date-time"})]
# An answer's time: RFC 3339 in UTC ("2026-11-25T14:00:00.123000Z").
Moment = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]

_MONEY = re.compile(r"^(\d+)(?:\.(\d{1,2}))?$")


class Request(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are refused, not silently dropped."""


class Response(msgspec.Struct, rename="camel", kw_only=True):
    """Base of response bodies."""


# -- requests ----------------------------------------------------------------------------------------------
class ReservationRequest(Request):
    sku_id: Identifier
    quantity: Quantity = 1


class CheckoutRequest(Request):
    reservation_id: Annotated[ReservationId, Meta(min_length=1, max_length=200)]
    payment_method: PaymentMethod
    transaction_id: Annotated[str, Meta(max_length=bounds.MAX_TRANSACTION_ID_BYTES)] | None = None


class DemoTokenRequest(Request):
    """Demo mode only: the shopper to sign in as."""

    user: Identifier


class SaleRequest(Request):
    """Creates a SKU's sale or changes it; a field left out keeps its value. A new SKU needs ``total``."""

    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    price: Price | None = None
    flash_sale_price: Price | None = None
    total: Annotated[int, Meta(ge=0, le=bounds.MAX_UNITS)] | None = None
    per_user_limit: Annotated[int, Meta(ge=1, le=bounds.MAX_PER_USER_LIMIT)] | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    reservation_ttl_seconds: (
        Annotated[
            int,
            Meta(
                ge=bounds.MIN_RESERVATION_TTL_MS // 1000,
                le=bounds.MAX_RESERVATION_TTL_MS // 1000,
            ),
        ]
        | None
    ) = None
    paused: bool | None = None
    # A hot SKU's stock split into this many buckets on different Redis partitions (README, Stock
    # buckets); only when the sale is created (at most the partition count), fixed afterwards.
    buckets: Annotated[int, Meta(ge=1, le=bounds.MAX_BUCKETS)] | None = None


class WaitingRoomRequest(Request):
    """A waiting room in front of a SKU's sale (the whole room: every field not given takes its default).
    Shoppers join from ``opensAt`` (null: at any time before the start); those who join before the sale
    starts get random places among themselves, later ones queue in arrival order; ``admitPerSecond`` are
    let in each second from the start, each for ``admissionSeconds``; with ``stockFactor`` > 0, at most
    that many times the units available are admitted and not yet reserving at once."""

    admit_per_second: Annotated[int, Meta(ge=1, le=bounds.MAX_ADMIT_PER_S)]
    on: bool = True
    opens_at: Timestamp | None = None
    stock_factor: Annotated[int, Meta(ge=0, le=bounds.MAX_STOCK_FACTOR)] = 0
    admission_seconds: Annotated[
        int, Meta(ge=bounds.MIN_ADMISSION_TTL_MS // 1000, le=bounds.MAX_ADMISSION_TTL_MS // 1000)
    ] = 120


class RestockRequest(Request):
    """Units to add to (positive) or take from (negative) the sale's total; taken units must be available."""

    delta: Annotated[int, Meta(ge=-bounds.MAX_UNITS, le=bounds.MAX_UNITS)]


# -- responses ---------------------------------------------------------------------------------------------
class WaitingRoomBody(Response):
    """A sale's waiting room: reserve needs an admission from it while ``on``."""

    on: bool
    opens_at: Moment | None
    admit_per_second: int
    stock_factor: int
    admission_seconds: float


class Product(Response):
    """A SKU on sale with its live counters (available + reserved + sold == total)."""

    sku_id: SkuId
    name: str
    price: Price
    flash_sale_price: Price
    total: int
    available: int
    reserved: int
    sold: int
    per_user_limit: int
    starts_at: Moment | None
    ends_at: Moment | None
    reservation_ttl_seconds: float
    paused: bool
    updated_at: Moment
    waiting_room: WaitingRoomBody | None = None


class QueueBody(Response):
    """Where the caller stands in a SKU's waiting room. WAITING: ``position`` in line (1 = next; before
    the sale starts it is provisional, among the early crowd drawn at random) and an estimate; ADMITTED:
    reserve before ``admittedUntil``; LAPSED: the admission ran out unused (join again); SOLD_OUT: the
    SKU sold out while waiting; ENDED: the sale is over. ``pollAfterSeconds``: when to ask again."""

    sku_id: SkuId
    user_id: UserId
    status: QueueStatus
    position: int
    ahead: int
    line_length: int
    estimated_wait_seconds: float
    admitted_until: Moment | None
    starts_at: Moment | None
    admit_per_second: int
    new: bool
    poll_after_seconds: float


class ReservationBody(Response):
    id: ReservationId
    sku_id: SkuId
    user_id: UserId
    quantity: int
    status: ReservationStatus
    created_at: Moment
    expires_at: Moment
    order_id: OrderId | None
    ended_at: Moment | None


class OrderBody(Response):
    id: OrderId
    reservation_id: ReservationId
    sku_id: SkuId
    user_id: UserId
    quantity: int
    unit_price: Price
    total_price: Money
    status: OrderStatus
    payment_method: str
    transaction_id: str | None
    failure_reason: str | None
    created_at: Moment
    updated_at: Moment


class ErrorBody(Response, omit_defaults=True):
    """The one error shape. ``order`` is present only on a declined checkout (402) and on a checkout whose
    payment is pending (503 PAYMENT_PENDING)."""

    error: Annotated[str, Meta(examples=["OUT_OF_STOCK"])]
    message: str
    status: int
    path: str
    timestamp: Moment
    order: OrderBody | None = None


class DemoToken(Response):
    token: str
    user_id: UserId
    expires_in: int


class Alive(Response):
    status: Literal["UP"]


class NodeHealth(Response):
    """One Redis that serves partitions (the one server, or a master of a Redis Cluster)."""

    status: Literal["UP", "DOWN"]
    detail: str
    partitions: list[int]


class Component(Response, omit_defaults=True):
    status: Literal["UP", "DOWN", "NOT_CONFIGURED"]
    detail: str
    # Redis only: each node serving partitions, by host:port (on a cluster, every master)
    nodes: dict[str, NodeHealth] | None = None


class Readiness(Response):
    """Ready when every Redis serving partitions answers (each master of a cluster); PostgreSQL and
    Kafka are reported but only Redis decides."""

    status: Literal["UP", "DOWN"]
    components: dict[str, Component]


# -- conversions -------------------------------------------------------------------------------------------
def moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def moment_or_none(ms: int | None) -> datetime | None:
    return moment(ms) if ms else None


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def cents(amount: str) -> int:
    """ "19.9" -> 1990. The pattern of ``Price`` has already been checked by the decoder."""
    match = _MONEY.match(amount)
    if match is None:
        raise ValueError(f"not an amount of money: {amount!r}")
    whole, fraction = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(fraction)


def product(sale: Sale) -> Product:
    return Product(
        sku_id=sale.sku,
        name=sale.name,
        price=money(sale.price_cents),
        flash_sale_price=money(sale.flash_price_cents),
        total=sale.total,
        available=sale.available,
        reserved=sale.reserved,
        sold=sale.sold,
        per_user_limit=sale.per_user_limit,
        starts_at=moment_or_none(sale.starts_at),
        ends_at=moment_or_none(sale.ends_at),
        reservation_ttl_seconds=sale.reservation_ttl_ms / 1000,
        paused=sale.paused,
        updated_at=moment(sale.updated_at),
        waiting_room=waiting_room(sale.waiting_room),
    )


def waiting_room(room: WaitingRoom | None) -> WaitingRoomBody | None:
    if room is None:
        return None
    return WaitingRoomBody(
        on=room.on,
        opens_at=moment_or_none(room.opens_at),
        admit_per_second=room.admit_per_s,
        stock_factor=room.stock_factor,
        admission_seconds=room.admission_ttl_ms / 1000,
    )


def poll_after_s(standing: QueueStanding) -> float:
    """When a shopper's page should ask again: often near the front or once admitted, rarely far back
    (a tenth of the estimate, 1 to 15 s): a crowd of 50,000 polls at a few thousand requests a second."""
    if standing.status is not QueueStatus.WAITING:
        return 5.0
    return round(min(15.0, max(1.0, standing.estimated_wait_ms / 10_000)), 1)


def queue(standing: QueueStanding) -> QueueBody:
    return QueueBody(
        sku_id=standing.sku,
        user_id=standing.user,
        status=standing.status,
        position=standing.position,
        ahead=standing.ahead,
        line_length=standing.line,
        estimated_wait_seconds=standing.estimated_wait_ms / 1000,
        admitted_until=moment_or_none(standing.admitted_until),
        starts_at=moment_or_none(standing.starts_at),
        admit_per_second=standing.admit_per_s,
        new=standing.new,
        poll_after_seconds=poll_after_s(standing),
    )


def reservation(r: Reservation) -> ReservationBody:
    return ReservationBody(
        id=r.id,
        sku_id=r.sku,
        user_id=r.user,
        quantity=r.quantity,
        status=r.status,
        created_at=moment(r.created_at),
        expires_at=moment(r.expires_at),
        order_id=r.order_id,
        ended_at=moment_or_none(r.ended_at),
    )


def order(o: Order) -> OrderBody:
    return OrderBody(
        id=o.id,
        reservation_id=o.reservation_id,
        sku_id=o.sku,
        user_id=o.user,
        quantity=o.quantity,
        unit_price=money(o.unit_price_cents),
        total_price=money(o.total_cents),
        status=o.status,
        payment_method=o.payment_method,
        transaction_id=o.transaction_id or None,
        failure_reason=o.failure_reason,
        created_at=moment(o.created_at),
        updated_at=moment(o.updated_at),
    )


def as_ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)
