"""Folds a run of stream events into the row changes PostgreSQL needs: one change per row per batch.

A batch of 1,000 events touches few inventory rows (deltas are summed per SKU) and each reservation or
order at most once (its events are folded into its final state), so the transaction is a handful of
array statements whatever the batch size. Folding is pure: same events in, same changes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashsale.engine.events import Event


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ("<ms>-<seq>") as a sortable pair: ids compare by number, not as text."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class InventoryChange:
    da: int = 0
    dr: int = 0
    ds: int = 0
    dt: int = 0
    events: int = 0
    at: int = 0


@dataclass(slots=True)
class ProductSettings:
    """A product's full settings as of its latest sale_loaded event (total also follows restocks)."""

    sku: str
    name: str
    price_cents: int
    flash_price_cents: int
    total: int
    per_user_limit: int
    starts_at: int
    ends_at: int
    reservation_ttl_ms: int
    paused: bool
    at: int  # the last change
    created_at: int  # the first sale_loaded of this batch (used only if the product is new)


@dataclass(slots=True)
class ReservationChange:
    """A reservation's new state. ``created`` rows carry every column; others only what changed."""

    reservation_id: str
    created: bool
    updated_at: int
    user: str | None = None
    sku: str | None = None
    quantity: int | None = None
    status: str | None = None
    order_id: str | None = None
    order_id_set: bool = False
    created_at: int | None = None
    expires_at: int | None = None
    confirmed_at: int | None = None
    ended_at: int | None = None


@dataclass(slots=True)
class OrderChange:
    order_id: str
    created: bool
    updated_at: int
    reservation_id: str | None = None
    user: str | None = None
    sku: str | None = None
    quantity: int | None = None
    unit_price_cents: int | None = None
    total_cents: int | None = None
    status: str | None = None
    payment_method: str | None = None
    transaction_id: str | None = None
    failure_reason: str | None = None
    created_at: int | None = None


class UnknownEvent(ValueError):
    """An event type this worker does not know: a newer engine wrote it. Stops the partition, loudly."""


@dataclass(slots=True)
class Batch:
    """The row changes of a run of events of one partition, in stream order."""

    partition: int
    events: list[Event]
    inventory: dict[str, InventoryChange] = field(default_factory=dict)
    products: dict[str, ProductSettings] = field(default_factory=dict)
    product_totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # sku -> (total, at)
    reservations: dict[str, ReservationChange] = field(default_factory=dict)
    orders: dict[str, OrderChange] = field(default_factory=dict)

    @property
    def last_id(self) -> str:
        return self.events[-1].stream_id

    # -- folding ------------------------------------------------------------------------------------------
    @classmethod
    def fold(cls, partition: int, events: list[Event]) -> Batch:
        batch = cls(partition, events)
        for event in events:
            batch._add(event)
        return batch

    def _add(self, e: Event) -> None:
        if e.da or e.dr or e.ds or e.dt or e.type == "sale_loaded":
            change = self.inventory.get(e.sku)
            if change is None:
                change = self.inventory[e.sku] = InventoryChange()
            change.da += e.da
            change.dr += e.dr
            change.ds += e.ds
            change.dt += e.dt
            change.events += 1
            change.at = e.at
        handler = _HANDLERS.get(e.type)
        if handler is None:
            raise UnknownEvent(f"event {e.id} has unknown type {e.type!r}")
        handler(self, e)

    def _reservation(self, e: Event) -> ReservationChange:
        rid = _required(e, "reservation_id")
        change = self.reservations.get(rid)
        if change is None:
            change = self.reservations[rid] = ReservationChange(rid, created=False, updated_at=e.at)
        change.updated_at = e.at
        return change

    def _order(self, e: Event) -> OrderChange:
        oid = _required(e, "order_id")
        change = self.orders.get(oid)
        if change is None:
            change = self.orders[oid] = OrderChange(oid, created=False, updated_at=e.at)
        change.updated_at = e.at
        return change

    def _sale_loaded(self, e: Event) -> None:
        self.product_totals.pop(e.sku, None)
        earlier = self.products.get(e.sku)
        self.products[e.sku] = ProductSettings(
            sku=e.sku,
            name=_required(e, "name"),
            price_cents=_required(e, "price_cents"),
            flash_price_cents=_required(e, "flash_price_cents"),
            total=_required(e, "total"),
            per_user_limit=_required(e, "per_user_limit"),
            starts_at=e.starts_at or 0,
            ends_at=e.ends_at or 0,
            reservation_ttl_ms=_required(e, "reservation_ttl_ms"),
            paused=bool(e.paused),
            at=e.at,
            created_at=earlier.created_at if earlier else e.at,
        )

    def _restocked(self, e: Event) -> None:
        total = _required(e, "total")
        settings = self.products.get(e.sku)
        if settings is not None:
            settings.total = total
            settings.at = e.at
        else:
            self.product_totals[e.sku] = (total, e.at)

    def _reserved(self, e: Event) -> None:
        self.reservations[_required(e, "reservation_id")] = ReservationChange(
            _required(e, "reservation_id"),
            created=True,
            updated_at=e.at,
            user=_required(e, "user"),
            sku=e.sku,
            quantity=_required(e, "quantity"),
            status="RESERVED",
            created_at=e.at,
            expires_at=_required(e, "expires_at"),
        )

    def _hold_ended(self, e: Event) -> None:
        r = self._reservation(e)
        r.status = _required(e, "status")
        r.ended_at = e.at
        if e.order_id:
            # Expired while paying: the order failed in the same step.
            o = self._order(e)
            o.status = e.order_status or "FAILED"
            o.failure_reason = "CHECKOUT_TIMEOUT"

    def _checkout_started(self, e: Event) -> None:
        oid = _required(e, "order_id")
        r = self._reservation(e)
        r.order_id, r.order_id_set = oid, True
        self.orders[oid] = OrderChange(
            oid,
            created=True,
            updated_at=e.at,
            reservation_id=_required(e, "reservation_id"),
            user=_required(e, "user"),
            sku=e.sku,
            quantity=_required(e, "quantity"),
            unit_price_cents=_required(e, "unit_price_cents"),
            total_cents=_required(e, "total_cents"),
            status="PENDING",
            payment_method=_required(e, "payment_method"),
            created_at=e.at,
        )

    def _checkout_failed(self, e: Event) -> None:
        r = self._reservation(e)
        r.order_id, r.order_id_set = None, True
        o = self._order(e)
        o.status = "FAILED"
        o.failure_reason = e.reason or "PAYMENT_FAILED"

    def _confirmed(self, e: Event) -> None:
        r = self._reservation(e)
        r.status = "CONFIRMED"
        r.confirmed_at = r.ended_at = e.at
        o = self._order(e)
        o.status = "CONFIRMED"
        o.transaction_id = e.transaction_id or ""

    def _order_cancelled(self, e: Event) -> None:
        self._order(e).status = "CANCELLED"

    def _order_fulfilled(self, e: Event) -> None:
        self._order(e).status = "FULFILLED"

    # -- statement parameters (one array per column) ------------------------------------------------------
    def product_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "sku_id": p.sku,
                    "name": p.name,
                    "price_cents": p.price_cents,
                    "flash_price_cents": p.flash_price_cents,
                    "total": p.total,
                    "per_user_limit": p.per_user_limit,
                    "starts_at": p.starts_at,
                    "ends_at": p.ends_at,
                    "reservation_ttl_ms": p.reservation_ttl_ms,
                    "paused": p.paused,
                    "at": p.at,
                    "created_at": p.created_at,
                }
                for p in self.products.values()
            ]
        )

    def product_total_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [{"sku_id": sku, "total": total, "at": at} for sku, (total, at) in self.product_totals.items()]
        )

    def new_inventory_rows(self) -> dict[str, list[Any]]:
        return _columns([{"sku_id": p.sku, "at": p.at} for p in self.products.values()])

    def inventory_rows(self) -> dict[str, list[Any]]:
        # Sorted: rows are locked and updated in one fixed order, so two batches never deadlock.
        return _columns(
            [
                {
                    "sku_id": sku,
                    "da": c.da,
                    "dr": c.dr,
                    "ds": c.ds,
                    "dt": c.dt,
                    "events": c.events,
                    "at": c.at,
                }
                for sku, c in sorted(self.inventory.items())
            ]
        )

    def new_reservation_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "reservation_id": r.reservation_id,
                    "user_id": r.user,
                    "sku_id": r.sku,
                    "quantity": r.quantity,
                    "status": r.status,
                    "order_id": r.order_id,
                    "created_at": r.created_at,
                    "expires_at": r.expires_at,
                    "confirmed_at": r.confirmed_at,
                    "ended_at": r.ended_at,
                    "updated_at": r.updated_at,
                }
                for r in self.reservations.values()
                if r.created
            ]
        )

    def changed_reservation_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "reservation_id": r.reservation_id,
                    "status": r.status,
                    "order_id": r.order_id,
                    "order_id_set": r.order_id_set,
                    "confirmed_at": r.confirmed_at,
                    "ended_at": r.ended_at,
                    "updated_at": r.updated_at,
                }
                for r in self.reservations.values()
                if not r.created
            ]
        )

    def new_order_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "order_id": o.order_id,
                    "reservation_id": o.reservation_id,
                    "user_id": o.user,
                    "sku_id": o.sku,
                    "quantity": o.quantity,
                    "unit_price_cents": o.unit_price_cents,
                    "total_price_cents": o.total_cents,
                    "status": o.status,
                    "payment_method": o.payment_method,
                    "transaction_id": o.transaction_id,
                    "failure_reason": o.failure_reason,
                    "created_at": o.created_at,
                    "updated_at": o.updated_at,
                }
                for o in self.orders.values()
                if o.created
            ]
        )

    def changed_order_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "order_id": o.order_id,
                    "status": o.status,
                    "transaction_id": o.transaction_id,
                    "failure_reason": o.failure_reason,
                    "updated_at": o.updated_at,
                }
                for o in self.orders.values()
                if not o.created
            ]
        )


def _required(e: Event, name: str) -> Any:
    value = getattr(e, name)
    if value is None:
        raise UnknownEvent(f"event {e.id} ({e.type}) lacks {name}")
    return value


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts to one list per column (the shape the unnest statements take); {} when no rows."""
    if not rows:
        return {}
    return {column: [row[column] for row in rows] for column in rows[0]}


_HANDLERS = {
    "sale_loaded": Batch._sale_loaded,
    "restocked": Batch._restocked,
    "reserved": Batch._reserved,
    "released": Batch._hold_ended,
    "expired": Batch._hold_ended,
    "checkout_started": Batch._checkout_started,
    "checkout_failed": Batch._checkout_failed,
    "confirmed": Batch._confirmed,
    "order_cancelled": Batch._order_cancelled,
    "order_fulfilled": Batch._order_fulfilled,
}
