"""Typed results of the engine: what a script returns, decoded into msgspec Structs.

Money is in integer cents and time in integer milliseconds since the epoch (the Redis server's clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import msgspec


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


def sale_from_values(values: list[Any]) -> Sale | None:
    """A Sale from HMGET of SALE_FIELDS; None when the SKU has no sale."""
    if values[0] is None:
        return None
    return msgspec.convert(dict(zip(SALE_FIELDS, values, strict=True)), Sale, strict=False)


def reservation_from_record(reservation_id: str, record: str) -> Reservation:
    """A Reservation from its record, the string lua/includes/reservations.lua writes:
    ``sku user quantity status created_at expires_at order_id pay_until ended_at`` ('-' / 0: none)."""
    sku, user, quantity, status, created_at, expires_at, order_id, pay_until, ended_at = record.split(" ")
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


def reservation_from_reserve(sku: str, user: str, reply: str) -> Reservation:
    """The new hold from reserve's reply ``<id> <quantity> <created_at> <expires_at>``."""
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
