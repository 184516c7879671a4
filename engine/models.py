"""Typed results of the engine: what a script returns, decoded into msgspec Structs.

Money is in integer cents and time in integer milliseconds since the epoch (the Redis server's clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import msgspec

from .errors import OutOfStock


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    FULFILLED = "FULFILLED"
    CANCELLED = "CANCELLED"


class SaleSettings(msgspec.Struct, kw_only=True, frozen=True):
    """What ``load_sale`` sets for a SKU. A field left as None keeps its current value (or its default)."""

    sku: str
    name: str | None = None
    price_cents: int | None = None
    flash_price_cents: int | None = None
    total: int | None = None
    per_user_limit: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    reservation_ttl_ms: int | None = None
    paused: bool | None = None

    def as_pairs(self) -> list[str]:
        """The given fields as the field/value pairs the script takes."""
        pairs: list[str] = []
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if field == "sku" or value is None:
                continue
            pairs += [field, str(int(value)) if isinstance(value, bool) else str(value)]
        return pairs


class Sale(msgspec.Struct, kw_only=True, frozen=True):
    """A SKU's sale: its settings and live counters (available + reserved + sold == total)."""

    sku: str
    name: str
    price_cents: int
    flash_price_cents: int
    total: int
    available: int
    reserved: int
    sold: int
    per_user_limit: int
    starts_at: int
    ends_at: int
    reservation_ttl_ms: int
    paused: bool
    created_at: int
    updated_at: int
    waiting_room: WaitingRoom | None = None
    # A hot SKU's stock split into buckets on different partitions (engine/buckets.py): the counters
    # above are the sums over its buckets, and ``moving`` the units between two buckets right now
    # (available + reserved + sold + moving == total).
    buckets: int = 1
    moving: int = 0


class WaitingRoom(msgspec.Struct, kw_only=True, frozen=True):
    """A sale's waiting room (lua/set_waiting_room.lua): joiners are taken from ``opens_at`` (0: at any
    time), ``admit_per_s`` shoppers are let in each second once the sale starts, at most ``stock_factor``
    x available admitted and not yet reserving at once (0: no such rule), each for ``admission_ttl_ms``."""

    on: bool = True
    opens_at: int = 0
    admit_per_s: int = 10
    stock_factor: int = 0
    admission_ttl_ms: int = 120_000

    def as_args(self) -> tuple[str, ...]:
        return (
            str(int(self.on)),
            str(self.opens_at),
            str(self.admit_per_s),
            str(self.stock_factor),
            str(self.admission_ttl_ms),
        )


class QueueStatus(StrEnum):
    WAITING = "WAITING"
    ADMITTED = "ADMITTED"
    LAPSED = "LAPSED"
    SOLD_OUT = "SOLD_OUT"
    ENDED = "ENDED"


class QueueStanding(msgspec.Struct, kw_only=True, frozen=True):
    """Where a shopper stands in a SKU's waiting room (queue_join, queue_status)."""

    sku: str
    user: str
    status: QueueStatus
    position: int  # 1-based while WAITING (provisional before the sale starts), else 0
    line: int  # shoppers in line now
    admitted_until: int  # ms: the admission's deadline (ADMITTED, LAPSED), else 0
    new: bool  # this call made the place
    admit_per_s: int
    starts_at: int
    now: int

    @property
    def ahead(self) -> int:
        return max(self.position - 1, 0)

    @property
    def estimated_wait_ms(self) -> int:
        """Until admission, at the room's rate: the time left before the start, then the line ahead."""
        if self.status is not QueueStatus.WAITING:
            return 0
        before_start = max(self.starts_at - self.now, 0)
        return before_start + (self.position * 1000) // max(self.admit_per_s, 1)


class AdmitStep(msgspec.Struct, kw_only=True, frozen=True):
    """What one step of a sale's admitter did (lua/queue_admit.lua)."""

    outcome: str
    admitted: int
    line: int
    sent_away: int


class QueueFigures(msgspec.Struct, kw_only=True, frozen=True):
    """A waiting room as an operator watches it (read from its keys, lua/includes/waiting_room.lua)."""

    sku: str
    now: int
    line: int  # shoppers in line
    admitted_live: int  # admissions not lapsed yet (used or not)
    joined: int  # places ever made
    admitted: int  # shoppers ever admitted
    lapsed: int  # admissions that lapsed unused (abandoned)
    used: int  # admissions that ended after a reservation used them
    sent_away: int  # shoppers told SOLD_OUT
    closed: str | None  # SOLD_OUT while the line is closed
    first_admitted_at: int  # ms, 0: nobody yet
    admitted_at: int  # ms of the last admission, 0: none
    tick_at: int  # ms of the admitter's last step, 0: none
    wait_ms: int  # time in line of everyone admitted, summed
    wait_buckets: dict[str, int]  # upper bound in s ("inf" last) -> shoppers admitted after that long

    def wait_quantile_s(self, q: float) -> float | None:
        """The q-quantile of time in line (upper bound of its bucket; None before any admission)."""
        total = sum(self.wait_buckets.values())
        if not total:
            return None
        seen = 0
        for bound, count in self.wait_buckets.items():
            seen += count
            if seen >= q * total:
                return float("inf") if bound == "inf" else float(bound)
        return float("inf")


def queue_figures_from(sku: str, now: int, line: int, live: int, room: Mapping[Any, Any]) -> QueueFigures:
    from .bounds import QUEUE_WAIT_BUCKETS_S

    def count(name: str) -> int:
        return int(room.get(name) or 0)

    bounds = [str(b) for b in QUEUE_WAIT_BUCKETS_S] + ["inf"]
    return QueueFigures(
        sku=sku,
        now=now,
        line=line,
        admitted_live=live,
        joined=count("joined"),
        admitted=count("admitted"),
        lapsed=count("lapsed"),
        used=count("used"),
        sent_away=count("sent_away"),
        closed=room.get("closed") or None,
        first_admitted_at=count("first_admitted_at"),
        admitted_at=count("admitted_at"),
        tick_at=count("tick_at"),
        wait_ms=count("wait_ms"),
        wait_buckets={bound: count(f"w:{bound}") for bound in bounds},
    )


class Reservation(msgspec.Struct, kw_only=True, frozen=True):
    """A hold of units for one user. ``order_id`` is set while a checkout is paying for it."""

    id: str
    sku: str
    user: str
    quantity: int
    status: ReservationStatus
    created_at: int
    expires_at: int
    order_id: str | None = None
    pay_until: int | None = None
    ended_at: int | None = None


class Order(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    reservation_id: str
    sku: str
    user: str
    quantity: int
    unit_price_cents: int
    total_cents: int
    status: OrderStatus
    payment_method: str
    created_at: int
    updated_at: int
    transaction_id: str | None = None
    failure_reason: str | None = None


class UserCounts(msgspec.Struct, kw_only=True, frozen=True):
    """A user's units of one SKU: held in active reservations and bought (the per-user limit counts both)."""

    held: int = 0
    purchased: int = 0


T = TypeVar("T")

# A SKU's own fields in its hash (lua/includes/sales.lua's SALE_FIELDS); the hash also holds user counts,
# so it is read by these names, never whole.
SALE_FIELDS = (
    "sku",
    "name",
    "price_cents",
    "flash_price_cents",
    "total",
    "available",
    "reserved",
    "sold",
    "per_user_limit",
    "starts_at",
    "ends_at",
    "reservation_ttl_ms",
    "paused",
    "created_at",
    "updated_at",
)


# The waiting room's fields of a SKU hash (lua/includes/waiting_room.lua), read with the sale's own.
WAITING_ROOM_FIELDS = ("waiting_room", "wr_opens_at", "wr_rate", "wr_stock_factor", "wr_admission_ttl_ms")
# A stock bucket's fields (lua/load_sale.lua): how many buckets, which one this hash is, units moved in - out.
BUCKET_FIELDS = ("buckets", "bucket", "moved")
SALE_AND_ROOM_FIELDS = SALE_FIELDS + WAITING_ROOM_FIELDS + BUCKET_FIELDS


def sale_from_fields(fields: Mapping[Any, Any]) -> Sale:
    """A Sale from a mapping of the SKU hash's fields (SALE_AND_ROOM_FIELDS; missing ones None)."""
    values: dict[str, Any] = {name: fields.get(name) for name in SALE_FIELDS}
    values["buckets"] = int(fields.get("buckets") or 1)
    room: list[Any] = [fields.get(name) for name in WAITING_ROOM_FIELDS]
    if room[0] is not None:
        values["waiting_room"] = WaitingRoom(
            on=str(room[0]) == "1",
            opens_at=int(room[1] or 0),
            admit_per_s=int(room[2] or 1),
            stock_factor=int(room[3] or 0),
            admission_ttl_ms=int(room[4] or 0),
        )
    return msgspec.convert(values, Sale, strict=False)


def sale_from_values(values: list[Any]) -> Sale | None:
    """A Sale from HMGET of SALE_AND_ROOM_FIELDS; None when the SKU has no sale."""
    if values[0] is None:
        return None
    return sale_from_fields(dict(zip(SALE_AND_ROOM_FIELDS, values, strict=True)))


def sale_from_pairs(reply: list[Any]) -> Sale:
    """A Sale from a script's flat field/value reply (lua/includes/sales.lua's saleReply)."""
    return sale_from_fields(dict(zip(reply[::2], reply[1::2], strict=True)))


def standing_from_reply(sku: str, user: str, reply: list[Any]) -> QueueStanding:
    """queue_join's and queue_status's reply: {status, position, line, deadline, new, rate, starts, now}."""
    status, position, line, deadline, new, rate, starts_at, now = reply
    return QueueStanding(
        sku=sku,
        user=user,
        status=QueueStatus(status),
        position=int(position),
        line=int(line),
        admitted_until=int(deadline),
        new=bool(int(new)),
        admit_per_s=int(rate),
        starts_at=int(starts_at),
        now=int(now),
    )


def admit_step_from_reply(reply: list[Any]) -> AdmitStep:
    outcome, admitted, line, sent_away = reply
    return AdmitStep(outcome=str(outcome), admitted=int(admitted), line=int(line), sent_away=int(sent_away))


def record_values(record: str) -> list[str]:
    """A reservation record's nine fields, ``sku user quantity status created_at expires_at order_id
    pay_until ended_at`` ('-' / 0: none), from either layout lua/includes/reservations.lua writes: an ended
    reservation's nine, or an open hold's seven (its status RESERVED and ended_at 0 left out)."""
    values = record.split(" ")
    if len(values) == 7:
        values[3:3] = [ReservationStatus.RESERVED.value]
        values.append("0")
    if len(values) != 9:
        raise ValueError(f"not a reservation record: {record!r}")
    return values


def reservation_from_record(reservation_id: str, record: str) -> Reservation:
    """A Reservation from its record (``record_values``)."""
    sku, user, quantity, status, created_at, expires_at, order_id, pay_until, ended_at = record_values(record)
    return Reservation(
        id=reservation_id,
        sku=sku,
        user=user,
        quantity=int(quantity),
        status=ReservationStatus(status),
        created_at=int(created_at),
        expires_at=int(expires_at),
        order_id=None if order_id == "-" else order_id,
        pay_until=int(pay_until) or None,
        ended_at=int(ended_at) or None,
    )


def sold_out(sku: str, first_hold_ends_in_ms: int) -> OutOfStock:
    """The OUT_OF_STOCK of reserve's sold-out answer, a negative number (lua/reserve.lua's fast path)."""
    return OutOfStock(f"sku {sku} has 0 units left; the first hold ends in {first_hold_ends_in_ms} ms")


def reservation_from_reserve(sku: str, user: str, reply: str | int) -> Reservation:
    """The new hold from reserve's reply ``<id> <quantity> <created_at> <expires_at>``; a negative number
    -n is its sold-out refusal (the SKU's first hold ends in n ms: lua/reserve.lua), raised as the
    OUT_OF_STOCK its full checks would give."""
    if isinstance(reply, int):
        raise sold_out(sku, -reply)
    reservation_id, quantity, created_at, expires_at = reply.split(" ")
    return Reservation(
        id=reservation_id,
        sku=sku,
        user=user,
        quantity=int(quantity),
        status=ReservationStatus.RESERVED,
        created_at=int(created_at),
        expires_at=int(expires_at),
    )


def from_pairs(reply: list[Any], into: type[T]) -> T:
    """Decodes a flat field/value array (a script's reply, or HGETALL's) into a Struct."""
    return msgspec.convert(dict(zip(reply[::2], reply[1::2], strict=True)), into, strict=False)


def from_hash(fields: Mapping[Any, Any], into: type[T]) -> T:
    return msgspec.convert(fields, into, strict=False)
