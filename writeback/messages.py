"""The Kafka messages the worker publishes: JSON bodies described by msgspec structs, key = SKU id.

Which topics an event goes to follows from what it does (``engine.events.effect``), not from a table of
event types: a reservation's status changed -> ``flash-sale-reservations``; an order's status changed ->
``flash-sale-orders``; a SKU's counters or settings changed -> ``flash-sale-inventory-updates``. So today:

    event               reservations  orders  inventory-updates
    sale_loaded                                 x
    restocked                                   x
    reserved                x                   x
    released                x                   x
    expired                 x         (x)       x      (orders too when a checkout was abandoned)
    checkout_started                  x
    checkout_failed                   x
    checkout_cancelled      x         x         x
    confirmed               x         x         x
    order_cancelled                   x         x
    order_fulfilled                   x
    waiting_room_set                            x      (WaitingRoomMessage: the room's settings)
    queue_admitted                              x      (WaitingRoomMessage: who was let in)
    queue_closed                                x      (WaitingRoomMessage: how many were sent away)

Every body carries ``event_id`` (stable and unique: ``<partition>-<stream id>``, so consumers drop repeats
of at-least-once delivery) and ``schema_version`` (bumped on any incompatible change).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
from flashsale.engine.events import Event, effect

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
    # A hot SKU's stock buckets (engine/buckets.py): units put into (+) or taken out of (-) a move between
    # two buckets, and the transfer's id and buckets. Each bucket's messages are in its order; two
    # buckets' messages interleave as their partitions are drained (the key, the SKU, is the same).
    moving_delta: int = 0
    transfer_id: str | None = None
    from_bucket: int | None = None
    to_bucket: int | None = None
    total: int | None = None
    name: str | None = None
    price_cents: int | None = None
    flash_price_cents: int | None = None
    per_user_limit: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    reservation_ttl_ms: int | None = None
    paused: bool | None = None


class WaitingRoomMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Topic flash-sale-inventory-updates (key = SKU, so in order with the SKU's stock): a waiting room's
    settings (waiting_room_set), the shoppers one admitter step let in (queue_admitted: ``users``), or
    how many it sent away when the SKU sold out (queue_closed: ``sent_away``)."""

    event_id: str
    schema_version: int
    type: str
    sku_id: str
    at: int
    on: bool | None = None
    opens_at: int | None = None
    admit_per_s: int | None = None
    stock_factor: int | None = None
    admission_ttl_ms: int | None = None
    admitted: int | None = None
    users: list[str] | None = None
    sent_away: int | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    reservations: str
    orders: str
    inventory: str


_ENCODER = msgspec.json.Encoder()


def messages(event: Event, topics: Topics) -> Iterator[tuple[str, bytes]]:
    """(topic, JSON body) for each topic the event goes to, in a fixed order."""
    e = event
    change = effect(e)
    if change.reservation is not None and "status" in change.reservation and e.reservation_id:
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
                    status=change.reservation["status"],
                    at=e.at,
                    expires_at=e.expires_at,
                    order_id=e.order_id,
                )
            ),
        )
    if change.order is not None and "status" in change.order and e.order_id:
        order = change.order
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
                    status=order["status"],
                    at=e.at,
                    quantity=e.quantity,
                    unit_price_cents=order.get("unit_price_cents"),
                    total_price_cents=order.get("total_cents"),
                    payment_method=order.get("payment_method"),
                    transaction_id=order.get("transaction_id") or None,
                    failure_reason=order.get("failure_reason"),
                )
            ),
        )
    if change.waiting_room is not None:
        room = change.waiting_room
        yield (
            topics.inventory,
            _ENCODER.encode(
                WaitingRoomMessage(
                    event_id=e.id,
                    schema_version=SCHEMA_VERSION,
                    type=e.type,
                    sku_id=e.sku,
                    at=e.at,
                    on=room.get("on"),
                    opens_at=room.get("opens_at"),
                    admit_per_s=room.get("admit_per_s"),
                    stock_factor=room.get("stock_factor"),
                    admission_ttl_ms=room.get("admission_ttl_ms"),
                    admitted=change.admitted or None,
                    users=e.users,
                    sent_away=change.sent_away or None,
                )
            ),
        )
    if change.available or change.reserved or change.sold or change.total or change.product is not None:
        product = change.product or {}
        yield (
            topics.inventory,
            _ENCODER.encode(
                InventoryMessage(
                    event_id=e.id,
                    schema_version=SCHEMA_VERSION,
                    type=e.type,
                    sku_id=e.sku,
                    at=e.at,
                    available_delta=change.available,
                    reserved_delta=change.reserved,
                    sold_delta=change.sold,
                    total_delta=change.total,
                    moving_delta=change.moving,
                    transfer_id=e.transfer_id,
                    from_bucket=e.from_bucket,
                    to_bucket=e.to_bucket,
                    total=product.get("total"),
                    name=product.get("name"),
                    price_cents=product.get("price_cents"),
                    flash_price_cents=product.get("flash_price_cents"),
                    per_user_limit=product.get("per_user_limit"),
                    starts_at=product.get("starts_at"),
                    ends_at=product.get("ends_at"),
                    reservation_ttl_ms=product.get("reservation_ttl_ms"),
                    paused=product.get("paused"),
                )
            ),
        )
