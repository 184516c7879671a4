"""Repair PostgreSQL from the log: its rows become the applied prefix, i.e. Redis minus the unapplied events.

Counters: Redis's minus the unapplied deltas. Products missing in PostgreSQL are recreated from Redis's
settings. Waiting rooms: Redis's settings, and its counts (admitted, sent away) minus the unapplied events'
(the worker adds those, and rewrites the settings of a room whose waiting_room_set it has yet to apply).
Reservation and order rows: as Redis has them, except the rows the unapplied events will write
(the worker writes those when it applies them; ``engine.events.fold`` says which). One transaction: every
row of the plan, or none. Meant for a stopped stack.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from flashsale.engine import Engine
from flashsale.engine.events import Counters, Fold, effect, fold
from flashsale.writeback.database import queries

from .state import (
    COUNTED_ORDERS,
    COUNTERS,
    OPEN,
    ROOM_COUNTS,
    ROOM_SETTINGS,
    SETTINGS,
    Record,
    Snapshot,
    counters,
    fmt,
    in_window,
    room_text,
)

log = logging.getLogger("flashsale.reconcile")


@dataclass(slots=True)
class PostgresPlan:
    inventory: dict[str, tuple[Counters | None, Counters]]  # sku -> (now, target)
    new_products: dict[str, Record]  # sku -> Redis settings + target counters
    reservations: list[Record]  # rows to upsert, as Redis has them
    orders: list[Record]
    unrepairable: list[str]
    rooms: dict[str, tuple[Record | None, Record]] = field(default_factory=dict)  # sku -> (now, target)

    def describe(self) -> list[str]:
        lines = [
            f"{sku}: inventory {fmt(now)} -> {fmt(target)}" for sku, (now, target) in self.inventory.items()
        ]
        lines += [f"{sku}: product and inventory recreated from Redis" for sku in self.new_products]
        lines += [
            f"{sku}: waiting room {room_text(now)} -> {room_text(target)}"
            for sku, (now, target) in self.rooms.items()
        ]
        if self.reservations:
            lines.append(f"{len(self.reservations)} reservation row(s) written as Redis has them")
        if self.orders:
            lines.append(f"{len(self.orders)} order row(s) written as Redis has them")
        lines += [f"cannot repair: {u}" for u in self.unrepairable]
        return lines


def _same(a: Record | None, b: Record, names: tuple[str, ...]) -> bool:
    return a is not None and all((a.get(n) or None) == (b.get(n) or None) for n in names)


def plan_postgres_from_stream(snap: Snapshot) -> PostgresPlan:
    r, pg, cutoff = snap.redis, snap.postgres, snap.cutoff_ms
    unapplied = r.unapplied_events()
    pending = fold(unapplied)  # the rows the worker will write when it applies these events
    deltas: dict[str, Counters] = defaultdict(Counters)
    for e in unapplied:
        deltas[e.sku].add(effect(e))

    plan = PostgresPlan({}, {}, [], [], [])
    for sku, sale in sorted(r.sales.items()):
        redis_c = counters(sale)
        if redis_c is None:
            plan.unrepairable.append(f"{sku}: Redis's sale record lacks counters (use redis-from-postgres)")
            continue
        delta = deltas.get(sku, Counters())
        target = Counters(
            **{n: getattr(redis_c, n) - getattr(delta, n) for n in COUNTERS},
            moving=redis_c.moving - delta.moving,
        )
        if sku not in pg.sales:
            if sku in pending.products and "name" in pending.products[sku].fields:
                continue  # the worker creates it when it applies the sale_loaded event
            plan.new_products[sku] = {**sale, **{n: getattr(target, n) for n in (*COUNTERS, "moving")}}
        elif fmt(counters(pg.sales[sku])) != fmt(target):
            plan.inventory[sku] = (counters(pg.sales[sku]), target)
    for sku in sorted(set(pg.sales) - set(r.sales)):
        plan.unrepairable.append(
            f"{sku} is in PostgreSQL but not in Redis (use --repair redis-from-postgres)"
        )

    _plan_rooms(snap, plan, pending)

    names = ("status", "order_id", "pay_until", "ended_at")
    for rid, res in sorted(r.reservations.items()):
        if rid in pending.reservations or not in_window(res, "reservation", cutoff):
            continue
        if not _same(pg.reservations.get(rid), res, names):
            plan.reservations.append(res)
    for rid, row in sorted(pg.reservations.items()):
        if rid not in r.reservations and rid not in pending.reservations and row["status"] == OPEN:
            plan.unrepairable.append(f"reservation {rid} is open in PostgreSQL and unknown to Redis")
    order_names = ("status", "transaction_id", "failure_reason")
    for oid, order in sorted(r.orders.items()):
        if oid in pending.orders or not in_window(order, "order", cutoff):
            continue
        if not _same(pg.orders.get(oid), order, order_names):
            plan.orders.append(order)
    for oid, row in sorted(pg.orders.items()):
        if oid not in r.orders and oid not in pending.orders and row["status"] in COUNTED_ORDERS:
            plan.unrepairable.append(f"order {oid} counts as sold in PostgreSQL and is unknown to Redis")
    return plan


def _plan_rooms(snap: Snapshot, plan: PostgresPlan, pending: Fold) -> None:
    """Each waiting room as Redis has it, less what the unapplied events will add."""
    pg = snap.postgres
    for sku, room in sorted(snap.redis.rooms.items()):
        if any(room.get(n) is None for n in ROOM_SETTINGS):
            plan.unrepairable.append(
                f"{sku}: Redis's waiting room lacks its settings (use redis-from-postgres)"
            )
            continue
        if sku not in pg.sales and sku not in plan.new_products:
            continue  # the worker creates the product, then the room, when it applies their events
        admitted, sent_away = pending.queue_counts.get(sku, [0, 0])
        target = {**room, "admitted": room["admitted"] - admitted, "sent_away": room["sent_away"] - sent_away}
        now = pg.rooms.get(sku)
        compared = ROOM_COUNTS
        if "on" not in getattr(pending.waiting_rooms.get(sku), "fields", {}):
            compared = ROOM_SETTINGS + ROOM_COUNTS  # else the worker rewrites the settings
        if target["admitted"] < 0 or target["sent_away"] < 0:
            plan.unrepairable.append(f"{sku}: Redis's waiting room counts less than its unapplied events")
        elif now is None or room_text(now, compared) != room_text(target, compared):
            plan.rooms[sku] = (now, target)
    for sku in sorted(set(pg.rooms) - set(snap.redis.rooms)):
        if sku in snap.redis.sales:
            plan.unrepairable.append(
                f"{sku}: waiting room in PostgreSQL but not in Redis (use --repair redis-from-postgres)"
            )


def _reservation_row(res: Record) -> dict[str, Any]:
    return {
        "id": res["id"],
        "user": res["user"],
        "sku": res["sku"],
        "quantity": int(res["quantity"]),
        "status": res["status"],
        "order_id": res.get("order_id"),
        "created_at": int(res["created_at"]),
        "expires_at": int(res["expires_at"]),
        "pay_until": res.get("pay_until") if res["status"] == OPEN and res.get("order_id") else None,
        "confirmed_at": res.get("confirmed_at"),
        "ended_at": None if res["status"] == OPEN else res.get("ended_at"),
    }


def _order_row(order: Record) -> dict[str, Any]:
    return {
        "id": order["id"],
        "reservation_id": order["reservation_id"],
        "user": order["user"],
        "sku": order["sku"],
        "quantity": int(order["quantity"]),
        "unit_price_cents": int(order["unit_price_cents"]),
        "total_cents": int(order["total_cents"]),
        "status": order["status"],
        "payment_method": order["payment_method"],
        "transaction_id": order.get("transaction_id"),
        "failure_reason": order.get("failure_reason") if order["status"] == "FAILED" else None,
        "created_at": int(order["created_at"]),
    }


def apply_postgres_plan(engine: Engine, database_url: str, plan: PostgresPlan, snap: Snapshot) -> None:
    q = queries()
    written = {res["id"] for res in plan.reservations}
    needed = {o["reservation_id"] for o in plan.orders} - written
    with psycopg.connect(database_url) as conn, conn.transaction():
        for sku, values in plan.new_products.items():
            settings = {n: values[n] for n in SETTINGS}
            conn.execute(
                q["repair_insert_product"],
                {
                    "sku": sku,
                    **settings,
                    "paused": bool(settings["paused"]),
                    "created_at": int(values["created_at"]),
                    **{n: int(values[n]) for n in (*COUNTERS, "moving")},
                    "buckets": int(values.get("buckets") or 1),
                },
            )
        for sku, (_now, target) in plan.inventory.items():
            counts = {n: getattr(target, n) for n in (*COUNTERS, "moving")}
            conn.execute(q["repair_set_inventory"], {"sku": sku, **counts})
        for sku, (_now, room) in plan.rooms.items():
            conn.execute(
                q["repair_upsert_waiting_room"],
                {"sku": sku, **{n: room[n] for n in ROOM_SETTINGS + ROOM_COUNTS}, "on": bool(room["on"])},
            )
        # Orders point at reservations (and reservations back at orders, checked at commit).
        for rid in sorted(needed):
            res = snap.redis.reservations.get(rid)
            if res is not None:
                conn.execute(q["repair_upsert_reservation"], _reservation_row(res))
        for res in plan.reservations:
            conn.execute(q["repair_upsert_reservation"], _reservation_row(res))
        for order in plan.orders:
            conn.execute(q["repair_upsert_order"], _order_row(order))
    log.info(
        "event=postgres_repaired inventory=%d products=%d rooms=%d reservations=%d orders=%d",
        len(plan.inventory), len(plan.new_products), len(plan.rooms), len(plan.reservations),
        len(plan.orders),
    )  # fmt: skip
