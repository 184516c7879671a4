"""A run of stream events as the row changes PostgreSQL needs: one change per row per batch.

The folding itself is ``engine.events.Fold`` (the one place that says what an event does); this module only
lays its result out as the column arrays of the statements in sql/queries.sql. A batch of 1,000 events
touches few inventory rows (deltas summed per SKU) and each reservation or order once (its final state), so
the transaction is a handful of array statements whatever the batch size. Pure: same events, same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flashsale.engine.events import Change, Event, Fold, fold


@dataclass(slots=True)
class Batch:
    """The row changes of a run of events of one partition, in stream order."""

    partition: int
    events: list[Event]
    changes: Fold

    @property
    def last_id(self) -> str:
        return self.events[-1].stream_id

    @classmethod
    def fold(cls, partition: int, events: list[Event]) -> Batch:
        return cls(partition, events, fold(events))

    @property
    def reservations(self) -> dict[str, Change]:
        return self.changes.reservations

    @property
    def orders(self) -> dict[str, Change]:
        return self.changes.orders

    # -- statement parameters (one array per column) ------------------------------------------------------
    def _full_products(self) -> list[Change]:
        # A sale_loaded event carries the whole settings: those products are upserted.
        return [p for p in self.changes.products.values() if "name" in p.fields]

    def product_rows(self) -> dict[str, Any]:
        return _upsert(_columns([_product_row(p) for p in self._full_products()]), replace=True)

    def product_total_rows(self) -> dict[str, list[Any]]:
        # Restocked without new settings in this batch: only the units on sale change.
        return _columns(
            [
                {"sku_id": p.id, "total": p.fields["total"], "at": p.fields["updated_at"]}
                for p in self.changes.products.values()
                if "name" not in p.fields
            ]
        )

    def products_if_missing_rows(self) -> dict[str, Any]:
        # A stock bucket's settings copy (bucket_set, total 0): creates the product only if its own
        # partition (bucket 0's sale_loaded) has not been applied yet.
        return _upsert(
            _columns([_product_row(p) for p in self.changes.products_if_missing.values()]), replace=False
        )

    def product_bucket_rows(self) -> dict[str, list[Any]]:
        # How many stock buckets a SKU has (its buckets' bucket_set events).
        return _columns(
            [
                {"sku_id": p.id, "buckets": p.fields["buckets"]}
                for p in self.changes.products_if_missing.values()
            ]
        )

    def new_inventory_rows(self) -> dict[str, list[Any]]:
        created = [*self._full_products(), *self.changes.products_if_missing.values()]
        return _columns([{"sku_id": p.id, "at": p.fields["updated_at"]} for p in created])

    def inventory_rows(self) -> dict[str, list[Any]]:
        # Sorted: rows are locked and updated in one fixed order, so two batches never deadlock.
        return _columns(
            [
                {
                    "sku_id": sku,
                    "da": c.available,
                    "dr": c.reserved,
                    "ds": c.sold,
                    "dt": c.total,
                    "dm": c.moving,
                    "events": self.changes.events_per_sku[sku],
                    "at": self.changes.last_at[sku],
                }
                for sku, c in sorted(self.changes.counters.items())
            ]
        )

    def waiting_room_rows(self) -> dict[str, list[Any]]:
        # A waiting_room_set event carries the whole settings: those rooms are upserted.
        return _columns(
            [
                {
                    "sku_id": sku,
                    "is_on": bool(f["on"]),
                    "opens_at": f["opens_at"],
                    "admit_per_s": f["admit_per_s"],
                    "stock_factor": f["stock_factor"],
                    "admission_ttl_ms": f["admission_ttl_ms"],
                    "at": f["updated_at"],
                }
                for sku, room in sorted(self.changes.waiting_rooms.items())
                if "on" in room.fields
                for f in [room.fields]
            ]
        )

    def waiting_room_count_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "sku_id": sku,
                    "admitted": admitted,
                    "sent_away": sent_away,
                    "at": self.changes.waiting_rooms[sku].fields["updated_at"],
                }
                for sku, (admitted, sent_away) in sorted(self.changes.queue_counts.items())
            ]
        )

    def new_reservation_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "reservation_id": r.id,
                    "user_id": f["user"],
                    "sku_id": f["sku"],
                    "quantity": f["quantity"],
                    "status": f["status"],
                    "order_id": f["order_id"],
                    "created_at": f["created_at"],
                    "expires_at": f["expires_at"],
                    "pay_until": f["pay_until"],
                    "confirmed_at": f["confirmed_at"],
                    "ended_at": f["ended_at"],
                    "updated_at": f["updated_at"],
                }
                for r in self.changes.reservations.values()
                if r.created
                for f in [r.fields]
            ]
        )

    def changed_reservation_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "reservation_id": r.id,
                    "status": f.get("status"),
                    "order_id": f.get("order_id"),
                    "order_id_set": "order_id" in f,
                    "pay_until": f.get("pay_until"),
                    "pay_until_set": "pay_until" in f,
                    "confirmed_at": f.get("confirmed_at"),
                    "ended_at": f.get("ended_at"),
                    "updated_at": f["updated_at"],
                }
                for r in self.changes.reservations.values()
                if not r.created
                for f in [r.fields]
            ]
        )

    def new_order_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "order_id": o.id,
                    "reservation_id": f["reservation_id"],
                    "user_id": f["user"],
                    "sku_id": f["sku"],
                    "quantity": f["quantity"],
                    "unit_price_cents": f["unit_price_cents"],
                    "total_price_cents": f["total_cents"],
                    "status": f["status"],
                    "payment_method": f["payment_method"],
                    "transaction_id": f["transaction_id"],
                    "failure_reason": f["failure_reason"],
                    "created_at": f["created_at"],
                    "updated_at": f["updated_at"],
                }
                for o in self.changes.orders.values()
                if o.created
                for f in [o.fields]
            ]
        )

    def changed_order_rows(self) -> dict[str, list[Any]]:
        return _columns(
            [
                {
                    "order_id": o.id,
                    "status": f.get("status"),
                    "transaction_id": f.get("transaction_id"),
                    "failure_reason": f.get("failure_reason"),
                    "updated_at": f["updated_at"],
                }
                for o in self.changes.orders.values()
                if not o.created
                for f in [o.fields]
            ]
        )


def _product_row(p: Change) -> dict[str, Any]:
    f = p.fields
    return {
        "sku_id": p.id,
        "name": f["name"],
        "price_cents": f["price_cents"],
        "flash_price_cents": f["flash_price_cents"],
        "total": f["total"],
        "per_user_limit": f["per_user_limit"],
        "starts_at": f["starts_at"],
        "ends_at": f["ends_at"],
        "reservation_ttl_ms": f["reservation_ttl_ms"],
        "paused": bool(f["paused"]),
        "at": f["updated_at"],
        "created_at": f["created_at"],
    }


def _upsert(columns: dict[str, list[Any]], *, replace: bool) -> dict[str, Any]:
    """upsert_products's parameters: the rows' columns (none: no statement) and whether it replaces."""
    return {**columns, "replace": replace} if columns else {}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts to one list per column (the shape the unnest statements take); {} when no rows."""
    if not rows:
        return {}
    return {column: [row[column] for row in rows] for column in rows[0]}
