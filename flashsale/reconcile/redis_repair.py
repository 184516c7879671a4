"""Repair Redis from PostgreSQL plus the unapplied events (after losing Redis, or restoring an old copy).

The plan is ``target.expected_redis``: every SKU's settings, counters and user counts, its waiting room's
settings and counts (admitted, sent away), every open hold at its deadline, and every reservation and order
Redis must hold, ended ones included (for the rest of their retention).

Applying it rewrites each SKU in one MULTI (a SKU is never seen half rebuilt), deletes what the
log does not know, and raises each stream's next id above PostgreSQL's offset. The streams are kept: their
unapplied events are still the worker's to apply, and the rebuilt state already includes them. Meant for a
stopped stack (API and worker down): it does not lock out concurrent writers.

A waiting room's line and its admissions are in no event (joins are not logged): the repair keeps what Redis
still has of them, only taking out of the line anyone also admitted and giving everyone in line a join time.
After Redis was lost they are gone: the room is back on with its counts, and shoppers join again (their
places are lost; an admission not yet used is lost too, a hold already made is restored). A room the log
does not know is removed with its line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from flashsale.engine import Engine
from flashsale.engine.bounds import RETENTION_MS
from flashsale.engine.buckets import TRANSFER_GRACE_MS
from flashsale.engine.events import Counters, stream_id_key
from flashsale.engine.keys import Keyspace, Partition, bought_field, held_field, home_bucket, new_transfer_id

from .state import (
    OPEN,
    ROOM_COUNTS,
    ROOM_SETTINGS,
    Record,
    Snapshot,
    StoreState,
    counters,
    deadline,
    fmt,
    in_window,
    room_text,
)
from .target import expected_redis

log = logging.getLogger("flashsale.reconcile")

MIN_TTL_MS = 1000


@dataclass(slots=True)
class RedisPlan:
    target: StoreState
    current: dict[str, Counters | None]
    orphans: list[str]  # SKUs Redis has that neither PostgreSQL nor the unapplied events know
    stale_reservations: list[str]  # records Redis holds that the log does not know
    stale_orders: list[str]
    missing_reservations: list[str]  # records Redis lacks
    missing_orders: list[str]
    changed_reservations: list[str]
    changed_orders: list[str]
    rooms: dict[str, tuple[Record | None, Record | None]]  # sku -> (now, target): rooms rewritten
    lines: dict[str, list[str]]  # sku -> users both in line and admitted, taken out of the line
    join_times: list[str]  # SKUs whose line lacks join times (or has some of users no longer in it)
    uncounted_admissions: list[str]  # SKUs with more admission records than counted: left as they are

    def describe(self) -> list[str]:
        lines = []
        for sku, sale in sorted(self.target.sales.items()):
            after, before = counters(sale), self.current.get(sku)
            change = "unchanged" if fmt(before) == fmt(after) else f"{fmt(before)} -> {fmt(after)}"
            holds = sum(
                1 for r in self.target.reservations.values() if r["sku"] == sku and r["status"] == OPEN
            )
            lines.append(
                f"{sku}: counters {change}; {holds} open hold(s), settings and user counts rewritten"
            )
        for sku, (before, after) in sorted(self.rooms.items()):
            if after is None:
                lines.append(f"{sku}: waiting room removed with its line ({room_text(before)})")
            else:
                lines.append(f"{sku}: waiting room {room_text(before)} -> {room_text(after)}")
        for sku, users in sorted(self.lines.items()):
            lines.append(f"{sku}: {len(users)} admitted shopper(s) taken out of the line")
        for sku in self.join_times:
            lines.append(f"{sku}: join times set for the line (now, for anyone in line without one)")
        for sku in self.uncounted_admissions:
            lines.append(
                f"{sku}: more admission records than admissions counted: left as they are "
                "(nothing tells which the log lost; postgres-from-stream counts them instead)"
            )
        for sku in self.orphans:
            lines.append(f"{sku}: removed from Redis (no product in PostgreSQL and no unapplied event)")
        for what, ids in (
            ("reservation(s) restored", self.missing_reservations),
            ("order(s) restored", self.missing_orders),
            ("reservation(s) rewritten", self.changed_reservations),
            ("order(s) rewritten", self.changed_orders),
            ("reservation(s) the log does not know removed", self.stale_reservations),
            ("order(s) the log does not know removed", self.stale_orders),
        ):
            if ids:
                lines.append(f"{len(ids)} {what}")
        return lines


def _differs(a: Record, b: Record) -> bool:
    return any(
        (a.get(k) or None) != (b.get(k) or None)
        for k in set(a) | set(b)
        if k != "updated_at" or "reservation_id" in a
    )


def plan_redis_from_postgres(snap: Snapshot) -> RedisPlan:
    r, cutoff = snap.redis, snap.cutoff_ms
    target = expected_redis(snap)
    wanted_res = {k: v for k, v in target.reservations.items() if in_window(v, "reservation", cutoff)}
    wanted_ord = {k: v for k, v in target.orders.items() if in_window(v, "order", cutoff)}
    target.reservations, target.orders = wanted_res, wanted_ord
    held_res = {k: v for k, v in r.reservations.items() if in_window(v, "reservation", cutoff)}
    held_ord = {k: v for k, v in r.orders.items() if in_window(v, "order", cutoff)}
    names = ROOM_SETTINGS + ROOM_COUNTS
    rooms = {
        sku: (r.rooms.get(sku), target.rooms.get(sku))
        for sku in sorted(set(r.rooms) | set(target.rooms) | set(r.lines))
        if room_text(r.rooms.get(sku), names) != room_text(target.rooms.get(sku), names)
        and (sku in target.sales or sku not in r.sales)  # an orphan SKU goes whole
    }
    lines = {
        sku: line.admitted_in_line()
        for sku, line in sorted(r.lines.items())
        if line.admitted_in_line() and target.rooms.get(sku) is not None
    }
    join_times = [
        sku
        for sku, line in sorted(r.lines.items())
        if line.join_times != len(line.line) and target.rooms.get(sku) is not None
    ]
    uncounted = [
        sku
        for sku, line in sorted(r.lines.items())
        if (room := target.rooms.get(sku)) is not None
        and len(line.admissions) + line.lapsed + line.used > int(room["admitted"])
    ]
    return RedisPlan(
        target=target,
        current={sku: counters(r.sales.get(sku)) for sku in target.sales},
        orphans=sorted(set(r.sales) - set(target.sales)),
        stale_reservations=sorted(set(held_res) - set(wanted_res)),
        stale_orders=sorted(set(held_ord) - set(wanted_ord)),
        missing_reservations=sorted(set(wanted_res) - set(held_res)),
        missing_orders=sorted(set(wanted_ord) - set(held_ord)),
        changed_reservations=sorted(
            k for k in set(wanted_res) & set(held_res) if _differs(wanted_res[k], held_res[k])
        ),
        changed_orders=sorted(
            k for k in set(wanted_ord) & set(held_ord) if _differs(wanted_ord[k], held_ord[k])
        ),
        rooms=rooms,
        lines=lines,
        join_times=join_times,
        uncounted_admissions=uncounted,
    )


def _record(res: Record) -> str:
    """The reservation record string (lua/includes/reservations.lua): an open hold's seven fields, an
    ended reservation's nine."""
    sku, user, quantity, order = res["sku"], res["user"], res["quantity"], res.get("order_id") or "-"
    created, expires = res["created_at"], res["expires_at"]
    if res["status"] == OPEN:
        fields = (sku, user, quantity, created, expires, order, res.get("pay_until") or 0)
    else:
        fields = (sku, user, quantity, res["status"], created, expires, order, 0, res.get("ended_at") or 0)
    return " ".join(str(v) for v in fields)


def _sale_hash(sale: Record) -> dict[str, str | int]:
    fields: dict[str, str | int] = {
        name: int(value) if isinstance(value, bool) else value
        for name, value in sale.items()
        if value is not None and name not in ("moving", "bucket", "buckets")
    }
    return fields


def _bucket_layout(
    keys: Keyspace, sku: str, sale: Record, users: dict[tuple[str, str], tuple[int, int]], holds: list[Record]
) -> list[tuple[Partition, dict[str, str | int]]]:
    """Each stock bucket's partition and hash fields (engine/buckets.py): one for a SKU without buckets.
    A bucketed SKU's holds and purchases stay in the bucket of their reservations (their users' home
    buckets); every available unit goes to bucket 0 (it moves again on demand). Units the log says are
    moving stay moving: ``_reissue_transfers`` gives them one ledger entry the sweeper deposits."""
    count = int(sale.get("buckets") or 1)
    fields = _sale_hash(sale)
    if count == 1:
        return [(keys.for_sku(sku), fields)]
    reserved, sold = [0] * count, [0] * count
    for res in holds:
        if res["status"] == OPEN:
            reserved[keys.bucket_of(sku, keys.for_reservation(res["id"]).index)] += int(res["quantity"])
    for (user_sku, user), (_held, bought) in users.items():
        if user_sku == sku:
            sold[home_bucket(user, count)] += bought
    available = int(sale["available"])
    layout = []
    for b in range(count):
        mine = dict(fields)
        mine.update(buckets=count, bucket=b, reserved=reserved[b], sold=sold[b])
        if b == 0:
            mine.update(available=available, moved=available + reserved[0] + sold[0] - int(sale["total"]))
        else:
            mine.update(total=0, available=0, moved=reserved[b] + sold[b])
        layout.append((keys.for_bucket(sku, b), mine))
    return layout


def _reissue_transfers(engine: Engine, sku: str, moving: int, partitions: list[Partition], now: int) -> None:
    """Replaces the SKU's transfer ledger entries and receipts (what Redis still has of them, if anything)
    by one entry for the units the log says are moving, from bucket 0 to bucket 0, old enough for the
    sweeper's next pass: it deposits them with a transferred_in event, so the log and Redis agree again."""
    for p in partitions:
        for key in (p.transfers_out(), p.transfers_in()):
            records = engine.redis.hgetall(key).items()
            mine = [tid for tid, record in records if str(record).split(" ")[0] == sku]
            if mine:
                engine.redis.hdel(key, *mine)
    if moving > 0:
        p = partitions[0]
        record = f"{sku} 0 {moving} {now - TRANSFER_GRACE_MS}"
        engine.redis.hset(p.transfers_out(), new_transfer_id(p), record)


def _room_settings(room: Record) -> dict[str, int]:
    """A waiting room's settings as the SKU hash's fields (lua/set_waiting_room.lua)."""
    if any(room.get(n) is None for n in ROOM_SETTINGS):
        return {}
    return {
        "waiting_room": int(bool(room["on"])),
        "wr_opens_at": int(room["opens_at"]),
        "wr_rate": int(room["admit_per_s"]),
        "wr_stock_factor": int(room["stock_factor"]),
        "wr_admission_ttl_ms": int(room["admission_ttl_ms"]),
    }


def _room_keys(p: Partition, sku: str) -> list[str]:
    return [p.waiting_room(sku), p.queue(sku), p.admitted(sku), p.queue_joined(sku), p.queue_left(sku)]


def _left(ended_at: int | None, now_ms: int) -> int:
    """How much of its retention an ended record has left (at least a second)."""
    return max(MIN_TTL_MS, RETENTION_MS - (now_ms - int(ended_at or now_ms)))


def apply_redis_plan(engine: Engine, plan: RedisPlan, snap: Snapshot) -> None:
    keys, now, target = engine.keys, snap.redis.now_ms, plan.target
    by_sku_res: dict[str, list[Record]] = {}
    for res in target.reservations.values():
        by_sku_res.setdefault(res["sku"], []).append(res)
    by_sku_ord: dict[str, list[Record]] = {}
    for order in target.orders.values():
        by_sku_ord.setdefault(order["sku"], []).append(order)
    open_now: dict[str, list[str]] = {}  # sku -> its records in the open hashes now
    for rid, res in snap.redis.reservations.items():
        if res["status"] == OPEN:
            open_now.setdefault(res["sku"], []).append(rid)
    for sku, sale in sorted(target.sales.items()):
        layout = _bucket_layout(keys, sku, sale, target.users, by_sku_res.get(sku, []))
        for bucket, (p, fields) in enumerate(layout):
            pipe = engine.redis.pipeline(transaction=True)
            pipe.delete(p.sku(sku), p.holds(sku), p.due(sku))
            stale_open = [rid for rid in open_now.get(sku, []) if keys.for_reservation(rid) == p]
            if stale_open:
                pipe.hdel(p.open_holds(), *stale_open)
            pipe.hset(p.sku(sku), mapping=fields)
            room = target.rooms.get(sku)
            if room is not None and bucket == 0:
                if _room_settings(room):
                    pipe.hset(p.sku(sku), mapping=_room_settings(room))
                pipe.hset(p.waiting_room(sku), mapping={n: int(room[n]) for n in ROOM_COUNTS})
                _mend_line(engine, pipe, p, sku, plan, now)
            elif sku in plan.rooms and bucket == 0:
                pipe.delete(*_room_keys(p, sku))
            for (user_sku, user), (held, bought) in target.users.items():
                if user_sku != sku or home_bucket(user, len(layout)) != bucket:
                    continue
                if held:
                    pipe.hset(p.sku(sku), held_field(user), held)
                if bought:
                    pipe.hset(p.sku(sku), bought_field(user), bought)
            pipe.sadd(p.catalog(), sku)
            for res in by_sku_res.get(sku, []):
                if keys.for_reservation(res["id"]) != p:
                    continue
                key = p.reservation(res["id"])
                if res["status"] == OPEN:
                    pipe.delete(key)
                    pipe.hset(p.open_holds(), res["id"], _record(res))
                    pipe.zadd(p.holds(sku), {res["id"]: deadline(res)})  # indexed at its deadline
                else:
                    pipe.hdel(p.open_holds(), res["id"])
                    pipe.set(key, _record(res), px=_left(res.get("ended_at"), now))
            for order in by_sku_ord.get(sku, []):
                if keys.for_order(order["id"]) != p:
                    continue
                key = p.order(order["id"])
                pipe.delete(key)
                pipe.hset(key, mapping={k: v for k, v in order.items() if v is not None})
                if order["status"] not in ("PENDING", "CONFIRMED"):
                    pipe.pexpire(key, _left(order.get("updated_at"), now))
            pipe.execute()
        if len(layout) > 1:
            _reissue_transfers(engine, sku, int(sale.get("moving") or 0), [p for p, _ in layout], now)
        log.info("event=redis_rebuilt sku=%s buckets=%d", sku, len(layout))
    for rid in plan.stale_reservations:
        p = engine.keys.for_reservation(rid)
        engine.redis.hdel(p.open_holds(), rid)
        engine.redis.delete(p.reservation(rid))
    for oid in plan.stale_orders:
        engine.redis.delete(engine.keys.for_order(oid).order(oid))
    for sku in plan.orphans:
        p = keys.for_sku(sku)
        pipe = engine.redis.pipeline(transaction=True)
        pipe.delete(p.sku(sku), p.holds(sku), p.due(sku))
        if open_now.get(sku):
            pipe.hdel(p.open_holds(), *open_now[sku])
        pipe.srem(p.catalog(), sku)
        pipe.delete(*_room_keys(p, sku))
        pipe.execute()
        log.info("event=redis_orphan_removed sku=%s", sku)
    raise_stream_floors(engine, snap.postgres.offsets)


def _mend_line(engine: Engine, pipe: Any, p: Partition, sku: str, plan: RedisPlan, now: int) -> None:
    """Queues, on the SKU's pipeline, the line's own repairs: the admitted leave it, everyone left in it
    has a join time (now, when it had none)."""
    admitted = plan.lines.get(sku, [])
    if admitted:
        pipe.zrem(p.queue(sku), *admitted)
        pipe.hdel(p.queue_joined(sku), *admitted)
    if sku not in plan.join_times:
        return
    in_line = {str(u) for u in engine.redis.zrange(p.queue(sku), 0, -1)} - set(admitted)
    times = {str(u) for u in engine.redis.hkeys(p.queue_joined(sku))}
    if times - in_line:
        pipe.hdel(p.queue_joined(sku), *sorted(times - in_line))
    if in_line - times:
        pipe.hset(p.queue_joined(sku), mapping=dict.fromkeys(sorted(in_line - times), now))


def raise_stream_floors(engine: Engine, offsets: dict[int, str]) -> None:
    """Makes every partition stream continue after what PostgreSQL applied, and says it was rebuilt.

    A Redis rebuilt after a loss may have an empty stream, or a clock behind the old server's: new events
    would then get ids at or below PostgreSQL's applied offset and the worker would skip them as already
    applied. XSETID moves the stream's last id up without adding an entry (a stream is created for it
    through a throwaway consumer group, since XSETID needs an existing key). The stream then lacks the
    entry at the offset, which the worker reads as "Redis lost events" and stops the partition for; the
    progress hash's ``rebuilt_after`` tells it this partition was rebuilt to continue after that offset.
    """
    for partition, applied in offsets.items():
        if applied == "0-0" or partition >= engine.config.partitions:
            continue
        p = engine.keys.partition(partition)
        stream = p.events()
        if not engine.redis.xrange(stream, applied, applied):
            engine.redis.hset(p.writeback_progress(), "rebuilt_after", applied)
        try:
            last = str(engine.redis.xinfo_stream(stream)["last-generated-id"])
        except redis.ResponseError:
            last = "0-0"
        if stream_id_key(last) >= stream_id_key(applied):
            continue
        engine.redis.xgroup_create(stream, "reconcile-floor", id="$", mkstream=True)
        engine.redis.xgroup_destroy(stream, "reconcile-floor")
        engine.redis.execute_command("XSETID", stream, applied)  # type: ignore[no-untyped-call]
        log.info("event=stream_floor_raised partition=%d last_id=%s", partition, applied)
