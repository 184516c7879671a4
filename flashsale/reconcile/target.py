"""What Redis must hold: PostgreSQL's state carried forward through the unapplied events.

Invariant 5 of ARCHITECTURE.md says Redis == PostgreSQL + the effect of the events not applied yet. This
module computes the right-hand side with ``engine.events.effect``, the same definition of every event the
worker applies to PostgreSQL, so checks and the Redis rebuild never interpret an event on their own.
"""

from __future__ import annotations

import copy

from flashsale.engine.events import Event, effect

from .state import ROOM_SETTINGS, SETTINGS, Record, Snapshot, StoreState


def _apply(state: StoreState, e: Event) -> None:
    change = effect(e)
    sale = state.sales.get(e.sku)
    if change.product is not None and "name" in change.product:  # sale_loaded: the settings, whole
        if sale is None:
            sale = state.sales[e.sku] = {
                "sku": e.sku,
                "total": 0,
                "available": 0,
                "reserved": 0,
                "sold": 0,
                "moving": 0,
                "created_at": e.at,
            }
        for name in SETTINGS:
            sale[name] = change.product[name]
    if sale is None and change.product_if_missing is not None:  # a stock bucket's copy, first
        sale = state.sales[e.sku] = {"sku": e.sku, "total": 0, "available": 0, "reserved": 0, "sold": 0}
        sale.update({"moving": 0, "created_at": e.at, "updated_at": e.at})
        for name in SETTINGS:
            sale[name] = change.product_if_missing[name]
    if sale is not None and change.product_if_missing is not None:
        sale["buckets"] = max(int(sale.get("buckets") or 1), int(change.product_if_missing["buckets"]))
    if sale is not None:
        for name in ("available", "reserved", "sold", "total", "moving"):
            sale[name] = int(sale.get(name) or 0) + getattr(change, name)
        if change.product is not None:
            sale["updated_at"] = e.at
    if (change.held or change.bought) and e.user is not None:
        held, bought = state.users.get((e.sku, e.user), (0, 0))
        state.users[(e.sku, e.user)] = (held + change.held, bought + change.bought)
    if change.waiting_room is not None or change.admitted or change.sent_away:
        room = state.rooms.get(e.sku)
        if room is None:
            room = state.rooms[e.sku] = {**dict.fromkeys(ROOM_SETTINGS), "admitted": 0, "sent_away": 0}
        if change.waiting_room is not None and "on" in change.waiting_room:  # waiting_room_set: whole
            for name in ROOM_SETTINGS:
                room[name] = change.waiting_room[name]
        room["admitted"] += change.admitted
        room["sent_away"] += change.sent_away
    _update(state.reservations, e.reservation_id, change.reservation, change.reservation_created)
    _update(state.orders, e.order_id, change.order, change.order_created)


def _update(records: dict[str, Record], key: str | None, fields: Record | None, created: bool) -> None:
    if key is None or fields is None:
        return
    if created:
        records[key] = {"id": key, **fields}
    elif key in records:
        records[key] = {**records[key], **fields}  # a copy: the record may be PostgreSQL's own
    # Else: a change to a record that ended before the window (neither store is asked to hold it).


def expected_redis(snap: Snapshot) -> StoreState:
    """The sales, user counts, waiting rooms, reservations and orders Redis must hold right now."""
    pg = snap.postgres
    # The reservations and orders (millions in a big sale) share PostgreSQL's records: an event's change
    # replaces the record it touches with a changed copy (_update), so neither store's state is altered.
    target = StoreState(
        sales=copy.deepcopy(pg.sales),
        users=dict(pg.users),
        reservations=dict(pg.reservations),
        orders=dict(pg.orders),
        rooms=copy.deepcopy(pg.rooms),
    )
    for event in snap.redis.unapplied_events():
        _apply(target, event)
    return target
