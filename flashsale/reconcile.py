"""Reconciliation: Redis, PostgreSQL and the not-yet-applied stream events, checked against each other.

The stream is the log (ARCHITECTURE.md, invariants 4-5): Redis's state is the effect of the whole log,
PostgreSQL's the effect of its applied prefix (``stream_offsets``), so per SKU

    PostgreSQL counters + deltas of the unapplied events == Redis counters

and each store must be consistent on its own: counts add up and are never negative, open holds add up to
``reserved``, confirmed and fulfilled orders to ``sold``, no user past the per-user limit, and the open holds
of PostgreSQL, carried forward through the unapplied events, are exactly Redis's.

Two repairs, each planned first (a list of changes to show) and applied only when asked:
``redis-from-postgres`` rebuilds Redis's sale state from PostgreSQL plus the unapplied events (after losing
Redis or part of it); ``postgres-from-stream`` rewrites PostgreSQL to the applied prefix of the log, that is
Redis's state minus the unapplied events (after PostgreSQL drifted). Both are meant for a stopped stack
(API and worker down): they do not lock out concurrent writers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from flashsale.engine import Engine
from flashsale.engine.events import Counters, Event, parse_entry
from flashsale.engine.keys import Partition
from flashsale.writeback.batch import Batch, stream_id_key
from flashsale.writeback.database import queries

log = logging.getLogger("flashsale.reconcile")

COUNTERS = ("total", "available", "reserved", "sold")
HOLDING = "RESERVED"
COUNTED_ORDERS = ("CONFIRMED", "FULFILLED")
SNAPSHOT_ATTEMPTS = 5
READ_CHUNK = 1000

# Progress: (phase description, units done, units in total).
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


class ReconcileError(RuntimeError):
    """Reconciliation could not run (a store unreachable, an unmigrated database); one sentence."""


# -- what was found -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drift:
    """One broken invariant: where, which check, what it should be and what it is."""

    sku: str
    check: str
    where: str  # redis | postgres | log (PostgreSQL + unapplied events vs Redis)
    expected: str
    actual: str

    def as_dict(self) -> dict[str, str]:
        return {
            "sku": self.sku,
            "check": self.check,
            "where": self.where,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass(slots=True)
class SkuView:
    sku: str
    redis: Counters | None
    postgres: Counters | None
    unapplied: Counters
    unapplied_events: int
    holds: int
    drift: int = 0

    def as_dict(self) -> dict[str, Any]:
        def counts(c: Counters | None) -> dict[str, int] | None:
            return None if c is None else {name: getattr(c, name) for name in COUNTERS}

        return {
            "sku": self.sku,
            "redis": counts(self.redis),
            "postgres": counts(self.postgres),
            "unapplied_deltas": counts(self.unapplied),
            "unapplied_events": self.unapplied_events,
            "active_reservations": self.holds,
            "drift": self.drift,
        }


@dataclass(slots=True)
class Report:
    skus: list[SkuView]
    drifts: list[Drift]
    offsets: dict[int, str]
    unapplied_events: int

    @property
    def ok(self) -> bool:
        return not self.drifts

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "drift_count": len(self.drifts),
            "drift": [d.as_dict() for d in self.drifts],
            "skus": [s.as_dict() for s in self.skus],
            "applied_offsets": {str(p): applied for p, applied in sorted(self.offsets.items())},
            "unapplied_events": self.unapplied_events,
        }


# -- snapshots of the two stores ----------------------------------------------------------------------------


@dataclass(slots=True)
class RedisState:
    sales: dict[str, dict[str, str]] = field(default_factory=dict)  # sku -> sku hash
    holds: dict[str, dict[str, int]] = field(default_factory=dict)  # sku -> reservation id -> deadline
    reservations: dict[str, dict[str, str]] = field(default_factory=dict)  # the open holds' hashes
    orders: dict[str, dict[str, str]] = field(default_factory=dict)  # every order hash Redis keeps
    users: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (sku, user) -> counts
    user_keys: dict[str, list[str]] = field(default_factory=dict)  # sku -> its user-count keys
    unapplied: dict[int, list[Event]] = field(default_factory=dict)

    def unapplied_events(self) -> list[Event]:
        return [e for p in sorted(self.unapplied) for e in self.unapplied[p]]


@dataclass(slots=True)
class PostgresState:
    offsets: dict[int, str] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending, confirmed, fulfilled


@dataclass(slots=True)
class Snapshot:
    redis: RedisState
    postgres: PostgresState


def _counters(fields: dict[str, Any] | None, names: Iterable[str] = COUNTERS) -> Counters | None:
    if not fields or any(fields.get(n) is None for n in names):
        return None
    return Counters(**{n: int(fields[n]) for n in names})


def read_postgres(conn: psycopg.Connection[Any]) -> PostgresState:
    q = queries()
    state = PostgresState()
    with conn.cursor(row_factory=dict_row) as cur:
        state.offsets = {
            int(r["partition"]): str(r["applied_id"]) for r in cur.execute(q["reconcile_offsets"])
        }
        state.products = {r["sku_id"]: r for r in cur.execute(q["reconcile_products"])}
        state.open_reservations = {
            r["reservation_id"]: r for r in cur.execute(q["reconcile_open_reservations"])
        }
        state.orders = {r["order_id"]: r for r in cur.execute(q["reconcile_orders"])}
    return state


def read_offsets(conn: psycopg.Connection[Any]) -> dict[int, str]:
    return {int(p): str(applied) for p, applied in conn.execute(queries()["reconcile_offsets"])}


def _reservation_key(engine: Engine, reservation_id: str) -> str:
    partition = engine.keys.for_id(reservation_id)
    if partition is None:
        raise ReconcileError(f"{reservation_id!r} is not a reservation id")
    return partition.reservation(reservation_id)


def _order_key(engine: Engine, order_id: str) -> str:
    partition = engine.keys.for_id(order_id)
    if partition is None:
        raise ReconcileError(f"{order_id!r} is not an order id")
    return partition.order(order_id)


def _scan(engine: Engine, pattern: str) -> list[str]:
    return sorted(str(k) for k in engine.redis.scan_iter(match=pattern, count=1000))


def read_redis(
    engine: Engine,
    offsets: dict[int, str],
    progress: Progress = _no_progress,
    pg_open: Iterable[str] = (),
) -> RedisState:
    """Per partition, the SKU hashes, open holds and the stream after the applied offset are read in one
    MULTI, so counters and unapplied events are one consistent cut of that partition."""
    state = RedisState()
    partitions = engine.keys.all()
    for done, p in enumerate(partitions):
        progress("partitions", done, len(partitions))
        skus = sorted(str(s) for s in engine.redis.smembers(p.catalog()))
        pipe = engine.redis.pipeline(transaction=True)
        for sku in skus:
            pipe.hgetall(p.sku(sku))
            pipe.zrange(p.holds(sku), 0, -1, withscores=True)
        pipe.xrange(p.events(), f"({offsets.get(p.index, '0-0')}", "+")
        replies = pipe.execute()
        for i, sku in enumerate(skus):
            sale, holds = replies[2 * i], replies[2 * i + 1]
            if sale:
                state.sales[sku] = sale
            state.holds[sku] = {str(rid): int(deadline) for rid, deadline in holds}
        state.unapplied[p.index] = [parse_entry(p.index, sid, fields) for sid, fields in replies[-1]]
        _read_entities(engine, p, skus, state)
    progress("partitions", len(partitions), len(partitions))
    _read_open_holds(engine, state, progress, pg_open)
    return state


def _read_entities(engine: Engine, p: Partition, skus: list[str], state: RedisState) -> None:
    order_keys = _scan(engine, p.order("*"))
    for start in range(0, len(order_keys), READ_CHUNK):
        pipe = engine.redis.pipeline(transaction=False)
        for key in order_keys[start : start + READ_CHUNK]:
            pipe.hgetall(key)
        for fields in pipe.execute():
            if fields and "id" in fields:
                state.orders[fields["id"]] = fields
    for sku in skus:
        prefix = p.user(sku, "")
        keys = _scan(engine, p.user(sku, "*"))
        state.user_keys[sku] = keys
        for start in range(0, len(keys), READ_CHUNK):
            chunk = keys[start : start + READ_CHUNK]
            pipe = engine.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hmget(key, "held", "purchased")
            for key, (held, purchased) in zip(chunk, pipe.execute(), strict=True):
                state.users[(sku, key[len(prefix) :])] = (int(held or 0), int(purchased or 0))


def _read_open_holds(engine: Engine, state: RedisState, progress: Progress, also: Iterable[str] = ()) -> None:
    """The hashes of Redis's open holds, and of ``also`` (holds PostgreSQL has open)."""
    ids = sorted({rid for holds in state.holds.values() for rid in holds} | set(also))
    for start in range(0, len(ids), READ_CHUNK):
        progress("reservations", start, len(ids))
        chunk = ids[start : start + READ_CHUNK]
        pipe = engine.redis.pipeline(transaction=False)
        for rid in chunk:
            pipe.hgetall(_reservation_key(engine, rid))
        for rid, fields in zip(chunk, pipe.execute(), strict=True):
            if fields:
                state.reservations[rid] = fields
    progress("reservations", len(ids), len(ids))


def snapshot(engine: Engine, database_url: str, progress: Progress = _no_progress) -> Snapshot:
    """PostgreSQL first (one repeatable-read transaction), then Redis from PostgreSQL's offsets; repeated
    while the worker moved an offset in between (its applied prefix must be the one the stream is cut at)."""
    try:
        with psycopg.connect(database_url, connect_timeout=10) as conn:
            for _attempt in range(SNAPSHOT_ATTEMPTS):
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    pg = read_postgres(conn)
                redis_state = read_redis(engine, pg.offsets, progress, pg.open_reservations)
                if read_offsets(conn) == pg.offsets:
                    return Snapshot(redis_state, pg)
                log.info("event=reconcile_retry reason=worker_advanced_offsets")
            log.warning("event=reconcile_unstable attempts=%d", SNAPSHOT_ATTEMPTS)
            return Snapshot(redis_state, pg)
    except psycopg.errors.UndefinedTable:
        raise ReconcileError("the database is not migrated: run `flashsale db migrate` first") from None
    except psycopg.OperationalError as error:
        raise ReconcileError(f"cannot reach PostgreSQL: {str(error).strip().splitlines()[0]}") from None


# -- the checks ---------------------------------------------------------------------------------------------


def _fmt(c: Counters | None) -> str:
    if c is None:
        return "missing"
    return " ".join(f"{n}={getattr(c, n)}" for n in COUNTERS)


def open_holds_after(pg: PostgresState, events: list[Event]) -> dict[str, str]:
    """PostgreSQL's open holds (id -> sku) carried forward through the unapplied events."""
    holds = {rid: str(r["sku_id"]) for rid, r in pg.open_reservations.items()}
    for e in events:
        if e.reservation_id is None:
            continue
        if e.type == "reserved":
            holds[e.reservation_id] = e.sku
        elif e.type in ("released", "expired", "confirmed"):
            holds.pop(e.reservation_id, None)
    return holds


@dataclass(slots=True)
class _Tally:
    """What the rows of one store add up to, per SKU and per (SKU, user)."""

    reserved: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sold: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    held: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    bought: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def hold(self, sku: str, user: str, quantity: int) -> None:
        self.reserved[sku] += quantity
        self.held[sku][user] += quantity

    def order(self, sku: str, user: str, quantity: int, status: str) -> None:
        if status in COUNTED_ORDERS:
            self.sold[sku] += quantity
            self.bought[sku][user] += quantity


def _redis_tally(r: RedisState, drifts: list[Drift]) -> _Tally:
    tally = _Tally()
    for sku, holds in r.holds.items():
        for rid in holds:
            res = r.reservations.get(rid)
            if res is None or res.get("status") != HOLDING or res.get("sku") != sku:
                status = "missing" if res is None else f"{res.get('status')} for {res.get('sku')}"
                drifts.append(Drift(sku, "open_hold_has_reservation", "redis", f"{rid} RESERVED", status))
                continue
            tally.hold(sku, res["user"], int(res["quantity"]))
    for order in r.orders.values():
        tally.order(order["sku"], order["user"], int(order["quantity"]), str(order.get("status")))
    return tally


def _postgres_tally(pg: PostgresState) -> _Tally:
    tally = _Tally()
    for row in pg.open_reservations.values():
        tally.hold(row["sku_id"], row["user_id"], int(row["quantity"]))
    for row in pg.orders.values():
        tally.order(row["sku_id"], row["user_id"], int(row["quantity"]), row["status"])
    return tally


def _counter_checks(sku: str, where: str, c: Counters | None, tally: _Tally) -> list[Drift]:
    """Invariant 1 in one store, and its rows agreeing with its counters."""
    if c is None:
        return []
    found = []
    if c.available + c.reserved + c.sold != c.total:
        found.append(Drift(sku, "counts_add_up", where, "available+reserved+sold == total", _fmt(c)))
    if any(getattr(c, n) < 0 for n in COUNTERS):
        found.append(Drift(sku, "nothing_negative", where, "all >= 0", _fmt(c)))
    if tally.reserved.get(sku, 0) != c.reserved:
        found.append(
            Drift(sku, "open_holds_match_reserved", where, str(c.reserved), str(tally.reserved.get(sku, 0)))
        )
    if tally.sold.get(sku, 0) != c.sold:
        found.append(Drift(sku, "orders_match_sold", where, str(c.sold), str(tally.sold.get(sku, 0))))
    return found


def _redis_user_checks(
    sku: str, limit: int, counts: dict[str, tuple[int, int]], tally: _Tally
) -> list[Drift]:
    """Invariant 2 in Redis: each user's held + purchased within the limit, and equal to their rows."""
    found = []
    held_rows, bought_rows = tally.held.get(sku, {}), tally.bought.get(sku, {})
    for user in sorted(set(counts) | set(held_rows) | set(bought_rows)):
        held, purchased = counts.get(user, (0, 0))
        actual = f"held={held} purchased={purchased}"
        if held < 0 or purchased < 0:
            found.append(Drift(sku, "nothing_negative", "redis", f"user {user} held, purchased >= 0", actual))
        if held + purchased > limit:
            found.append(Drift(sku, "per_user_limit", "redis", f"user {user} <= {limit}", actual))
        want = (held_rows.get(user, 0), bought_rows.get(user, 0))
        if (held, purchased) != want:
            expected = f"user {user} held={want[0]} purchased={want[1]}"
            found.append(Drift(sku, "user_counts_match_rows", "redis", expected, actual))
    return found


def _postgres_user_checks(sku: str, limit: int, tally: _Tally) -> list[Drift]:
    """Invariant 2 in PostgreSQL: open holds + counted orders per user within the limit."""
    units: dict[str, int] = defaultdict(int)
    for rows in (tally.held.get(sku, {}), tally.bought.get(sku, {})):
        for user, quantity in rows.items():
            units[user] += quantity
    return [
        Drift(sku, "per_user_limit", "postgres", f"user {user} <= {limit}", str(total))
        for user, total in sorted(units.items())
        if total > limit
    ]


def _hold_agreement(pg: PostgresState, r: RedisState, unapplied: list[Event]) -> list[Drift]:
    """PostgreSQL's open holds, carried through the unapplied events, must be exactly Redis's."""
    carried = open_holds_after(pg, unapplied)
    in_redis = {rid: sku for sku, holds in r.holds.items() for rid in holds}
    return [
        Drift(
            carried.get(rid) or in_redis[rid],
            "open_holds_agree",
            "log",
            f"{rid} {'open' if rid in carried else 'not open'} (PostgreSQL + unapplied)",
            "open in Redis" if rid in in_redis else "not open in Redis",
        )
        for rid in sorted(set(carried) ^ set(in_redis))
    ]


def check(snap: Snapshot) -> Report:
    """Every invariant of ARCHITECTURE.md that the two stores and the stream can show, per SKU."""
    r, pg = snap.redis, snap.postgres
    unapplied = r.unapplied_events()
    deltas: dict[str, Counters] = defaultdict(Counters)
    event_counts: dict[str, int] = defaultdict(int)
    for e in unapplied:
        deltas[e.sku].apply(e)
        event_counts[e.sku] += 1
    drifts: list[Drift] = []
    redis_tally, pg_tally = _redis_tally(r, drifts), _postgres_tally(pg)
    user_counts: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for (sku, user), counts in r.users.items():
        user_counts[sku][user] = counts

    views: list[SkuView] = []
    for sku in sorted(set(r.sales) | set(pg.products) | set(deltas)):
        sale, product = r.sales.get(sku), pg.products.get(sku)
        redis_c = _counters(sale)
        pg_c = _counters({n: product[f"{n}_count"] for n in COUNTERS} if product else None)
        delta = deltas.get(sku, Counters())
        found = _counter_checks(sku, "redis", redis_c, redis_tally)
        found += _counter_checks(sku, "postgres", pg_c, pg_tally)
        # Invariant 5: PostgreSQL + unapplied events == Redis.
        expected = Counters(**{n: (getattr(pg_c, n) if pg_c else 0) + getattr(delta, n) for n in COUNTERS})
        if _fmt(expected) != _fmt(redis_c):
            found.append(
                Drift(sku, "postgres_plus_unapplied_equals_redis", "log", _fmt(expected), _fmt(redis_c))
            )
        if sale is not None:
            limit = int(sale.get("per_user_limit", 1))
            found += _redis_user_checks(sku, limit, user_counts.get(sku, {}), redis_tally)
        if product is not None:
            found += _postgres_user_checks(sku, int(product["per_user_limit"]), pg_tally)
        drifts += found
        views.append(
            SkuView(
                sku=sku,
                redis=redis_c,
                postgres=pg_c,
                unapplied=delta,
                unapplied_events=event_counts.get(sku, 0),
                holds=len(r.holds.get(sku, {})),
                drift=len(found),
            )
        )

    by_sku = {view.sku: view for view in views}
    for drift in _hold_agreement(pg, r, unapplied):
        drifts.append(drift)
        if drift.sku in by_sku:
            by_sku[drift.sku].drift += 1
    # A missing hold record is found before the per-SKU loop; count it on its SKU's row too.
    for drift in drifts:
        if drift.check == "open_hold_has_reservation" and drift.sku in by_sku:
            by_sku[drift.sku].drift += 1
    return Report(views, drifts, dict(pg.offsets), len(unapplied))


def reconcile(engine: Engine, database_url: str, progress: Progress = _no_progress) -> Report:
    return check(snapshot(engine, database_url, progress))


# -- repair: Redis from PostgreSQL + the unapplied events ---------------------------------------------------


@dataclass(slots=True)
class RedisTarget:
    """What Redis must hold for one SKU after the rebuild."""

    sku: str
    sale: dict[Any, Any]
    holds: dict[str, dict[Any, Any]]  # open reservations
    orders: dict[str, dict[Any, Any]]  # pending, confirmed, fulfilled and those the events ended
    ended: dict[str, dict[Any, Any]]  # reservations the unapplied events ended (their final hash)
    users: dict[str, tuple[int, int]]


@dataclass(slots=True)
class RedisPlan:
    targets: list[RedisTarget]
    orphans: list[str]  # SKUs Redis has that neither PostgreSQL nor the unapplied events know
    stale_holds: dict[str, list[str]]  # sku -> open holds in Redis that the rebuild closes
    stale_orders: list[str]  # orders Redis counts as sold that PostgreSQL does not
    current: dict[str, Counters | None]

    def describe(self) -> list[str]:
        lines = []
        for t in self.targets:
            after = Counters(**{n: int(t.sale[n]) for n in COUNTERS})
            before = self.current.get(t.sku)
            change = "unchanged" if _fmt(before) == _fmt(after) else f"{_fmt(before)} -> {_fmt(after)}"
            lines.append(
                f"{t.sku}: counters {change}; {len(t.holds)} open hold(s), {len(t.orders)} order(s), "
                f"{len(t.users)} user count(s) rewritten"
                + (
                    f"; closes {len(self.stale_holds[t.sku])} hold(s) Redis has open"
                    if self.stale_holds.get(t.sku)
                    else ""
                )
            )
        for sku in self.orphans:
            lines.append(f"{sku}: removed from Redis (no product in PostgreSQL and no unapplied event)")
        if self.stale_orders:
            lines.append(
                f"{len(self.stale_orders)} order(s) Redis counts as sold but PostgreSQL does not: removed"
            )
        return lines


def _sale_from_product(p: dict[Any, Any]) -> dict[Any, Any]:
    return {
        "sku": p["sku_id"],
        "name": p["name"],
        "price_cents": int(p["base_price_cents"]),
        "flash_price_cents": int(p["flash_sale_price_cents"]),
        "total": int(p["total_count"] or 0),
        "available": int(p["available_count"] or 0),
        "reserved": int(p["reserved_count"] or 0),
        "sold": int(p["sold_count"] or 0),
        "per_user_limit": int(p["per_user_limit"]),
        "starts_at": int(p["starts_at"]),
        "ends_at": int(p["ends_at"]),
        "reservation_ttl_ms": int(p["reservation_ttl_ms"]),
        "paused": int(bool(p["paused"])),
        "created_at": int(p["created_at"]),
        "updated_at": int(p["updated_at"]),
    }


def _order_hash(o: dict[Any, Any]) -> dict[Any, Any]:
    h: dict[Any, Any] = {
        "id": o["order_id"],
        "reservation_id": o["reservation_id"],
        "sku": o["sku_id"],
        "user": o["user_id"],
        "quantity": int(o["quantity"]),
        "unit_price_cents": int(o["unit_price_cents"]),
        "total_cents": int(o["total_price_cents"]),
        "status": o["status"],
        "payment_method": o["payment_method"],
        "created_at": int(o["created_at"]),
        "updated_at": int(o["updated_at"]),
    }
    if o.get("transaction_id") is not None:
        h["transaction_id"] = o["transaction_id"]
    if o.get("failure_reason") is not None:
        h["failure_reason"] = o["failure_reason"]
    return h


def plan_redis_from_postgres(snap: Snapshot, payment_grace_ms: int) -> RedisPlan:
    """The sale state PostgreSQL's rows plus the unapplied events add up to, per SKU."""
    pg, r = snap.postgres, snap.redis
    sales = {sku: _sale_from_product(p) for sku, p in pg.products.items()}
    holds: dict[str, dict[Any, Any]] = {}
    for rid, row in pg.open_reservations.items():
        hold: dict[Any, Any] = {
            "id": rid,
            "sku": row["sku_id"],
            "user": row["user_id"],
            "quantity": int(row["quantity"]),
            "status": HOLDING,
            "created_at": int(row["created_at"]),
            "expires_at": int(row["expires_at"]),
        }
        holds[rid] = hold
    orders = {oid: _order_hash(o) for oid, o in pg.orders.items()}
    for rid, hold in holds.items():
        order_id = pg.open_reservations[rid]["order_id"]
        if order_id and order_id in orders and orders[order_id]["status"] == "PENDING":
            hold["order_id"] = order_id
            pay_until = max(int(hold["expires_at"]), int(orders[order_id]["created_at"]) + payment_grace_ms)
            hold["pay_until"] = pay_until
    ended: dict[str, dict[Any, Any]] = {}

    for e in r.unapplied_events():
        _replay(e, sales, holds, orders, ended, payment_grace_ms)

    targets: list[RedisTarget] = []
    for sku in sorted(sales):
        users: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        sku_holds = {rid: h for rid, h in holds.items() if h["sku"] == sku}
        sku_orders = {oid: o for oid, o in orders.items() if o["sku"] == sku}
        for h in sku_holds.values():
            users[str(h["user"])][0] += int(h["quantity"])
        for o in sku_orders.values():
            if o["status"] in COUNTED_ORDERS:
                users[str(o["user"])][1] += int(o["quantity"])
        targets.append(
            RedisTarget(
                sku=sku,
                sale=sales[sku],
                holds=sku_holds,
                orders=sku_orders,
                ended={rid: h for rid, h in ended.items() if h["sku"] == sku},
                users={u: (c[0], c[1]) for u, c in users.items()},
            )
        )
    orphans = sorted(set(r.sales) - set(sales))
    stale_holds = {
        sku: sorted(set(open_) - set(holds)) for sku, open_ in r.holds.items() if set(open_) - set(holds)
    }
    stale_orders = sorted(
        oid for oid, o in r.orders.items() if o.get("status") in COUNTED_ORDERS and oid not in orders
    )
    current = {sku: _counters(r.sales.get(sku)) for sku in sales}
    return RedisPlan(targets, orphans, stale_holds, stale_orders, current)


def _replay(
    e: Event,
    sales: dict[str, dict[Any, Any]],
    holds: dict[str, dict[Any, Any]],
    orders: dict[str, dict[Any, Any]],
    ended: dict[str, dict[Any, Any]],
    payment_grace_ms: int,
) -> None:
    """One unapplied event applied to the target state, the way its script changed Redis."""
    if e.type == "sale_loaded":
        sale = sales.setdefault(
            e.sku,
            {"sku": e.sku, "total": 0, "available": 0, "reserved": 0, "sold": 0, "created_at": e.at},
        )
        for name in ("name", "price_cents", "flash_price_cents", "per_user_limit", "starts_at", "ends_at",
                     "reservation_ttl_ms"):  # fmt: skip
            value = getattr(e, name)
            if value is not None:
                sale[name] = value
        sale["paused"] = int(bool(e.paused))
    current = sales.get(e.sku)
    if current is None:
        return
    for name, delta in (("available", e.da), ("reserved", e.dr), ("sold", e.ds), ("total", e.dt)):
        current[name] = int(current[name]) + delta
    if e.type in ("sale_loaded", "restocked"):
        current["updated_at"] = e.at
    rid, oid = e.reservation_id, e.order_id
    if e.type == "reserved" and rid:
        holds[rid] = {
            "id": rid,
            "sku": e.sku,
            "user": e.user or "",
            "quantity": e.quantity or 0,
            "status": HOLDING,
            "created_at": e.at,
            "expires_at": e.expires_at or e.at,
        }
    elif e.type in ("released", "expired") and rid:
        hold = holds.pop(rid, None)
        if hold is not None:
            hold.pop("pay_until", None)
            hold.pop("order_id", None)
            hold.update(status=e.status or e.type.upper(), ended_at=e.at)
            ended[rid] = hold
        if oid and oid in orders:
            orders[oid].update(status="FAILED", failure_reason="CHECKOUT_TIMEOUT", updated_at=e.at)
    elif e.type == "checkout_started" and rid and oid:
        hold = holds.get(rid)
        orders[oid] = {
            "id": oid,
            "reservation_id": rid,
            "sku": e.sku,
            "user": e.user or "",
            "quantity": e.quantity or 0,
            "unit_price_cents": e.unit_price_cents or 0,
            "total_cents": e.total_cents or 0,
            "status": "PENDING",
            "payment_method": e.payment_method or "",
            "created_at": e.at,
            "updated_at": e.at,
        }
        if hold is not None:
            hold["order_id"] = oid
            hold["pay_until"] = max(int(hold["expires_at"]), e.at + payment_grace_ms)
    elif e.type == "checkout_failed" and oid:
        if oid in orders:
            orders[oid].update(status="FAILED", failure_reason=e.reason or "PAYMENT_FAILED", updated_at=e.at)
        if rid and rid in holds:
            holds[rid].pop("order_id", None)
            holds[rid].pop("pay_until", None)
    elif e.type == "confirmed" and oid:
        if oid in orders:
            orders[oid].update(status="CONFIRMED", transaction_id=e.transaction_id or "", updated_at=e.at)
        hold = holds.pop(rid, None) if rid else None
        if hold is not None:
            hold.pop("pay_until", None)
            hold.update(status="CONFIRMED", ended_at=e.at)
            ended[str(rid)] = hold
    elif e.type in ("order_cancelled", "order_fulfilled") and oid and oid in orders:
        orders[oid].update(
            status="CANCELLED" if e.type == "order_cancelled" else "FULFILLED", updated_at=e.at
        )


def apply_redis_plan(engine: Engine, plan: RedisPlan, snap: Snapshot) -> None:
    """Writes the plan, one MULTI per SKU (a SKU is never seen half rebuilt). The streams are kept: their
    unapplied events are still the worker's to apply, and the rebuilt counters already include them."""
    keys = engine.keys
    for t in plan.targets:
        p = keys.for_sku(t.sku)
        old_holds = list(snap.redis.holds.get(t.sku, {}))
        pipe = engine.redis.pipeline(transaction=True)
        if old_holds:
            pipe.zrem(p.deadlines(), *old_holds)
        for rid in plan.stale_holds.get(t.sku, []):
            if rid not in snap.redis.reservations:
                continue  # only a dangling id in the hold sets, which are rewritten below
            # A hold Redis had open and the log does not: closed, kept readable like any ended hold.
            pipe.hset(
                p.reservation(rid), mapping={"status": "CANCELLED", "ended_at": int(t.sale["updated_at"])}
            )
            pipe.hdel(p.reservation(rid), "pay_until", "order_id")
        pipe.delete(p.holds(t.sku), p.sku(t.sku), *snap.redis.user_keys.get(t.sku, []))
        pipe.hset(p.sku(t.sku), mapping=t.sale)
        pipe.sadd(p.catalog(), t.sku)
        for rid, hold in t.holds.items():
            pipe.delete(p.reservation(rid))
            pipe.hset(p.reservation(rid), mapping=hold)
            deadline = int(hold.get("pay_until", hold["expires_at"]))
            pipe.zadd(p.holds(t.sku), {rid: deadline})
            pipe.zadd(p.deadlines(), {rid: deadline})
        for rid, hold in t.ended.items():
            pipe.delete(p.reservation(rid))
            pipe.hset(p.reservation(rid), mapping=hold)
        for oid, order in t.orders.items():
            pipe.delete(p.order(oid))
            pipe.hset(p.order(oid), mapping=order)
        for user, (held, purchased) in t.users.items():
            pipe.hset(p.user(t.sku, user), mapping={"held": held, "purchased": purchased})
        pipe.execute()
        log.info("event=redis_rebuilt sku=%s holds=%d orders=%d", t.sku, len(t.holds), len(t.orders))
    for oid in plan.stale_orders:
        engine.redis.delete(_order_key(engine, oid))
    raise_stream_floors(engine, snap.postgres.offsets)
    for sku in plan.orphans:
        p = keys.for_sku(sku)
        pipe = engine.redis.pipeline(transaction=True)
        holds = list(snap.redis.holds.get(sku, {}))
        if holds:
            pipe.zrem(p.deadlines(), *holds)
        pipe.delete(p.sku(sku), p.holds(sku), *snap.redis.user_keys.get(sku, []))
        pipe.srem(p.catalog(), sku)
        pipe.execute()
        log.info("event=redis_orphan_removed sku=%s", sku)


def raise_stream_floors(engine: Engine, offsets: dict[int, str]) -> None:
    """Makes every partition stream's next id larger than what PostgreSQL applied.

    A Redis rebuilt after a loss may have an empty stream, or a clock behind the old server's: new events
    would then get ids at or below PostgreSQL's applied offset and the worker would skip them as already
    applied. XSETID moves the stream's last id up without adding an entry (a stream is created for it
    through a throwaway consumer group, since XSETID needs an existing key).
    """
    for partition, applied in offsets.items():
        if applied == "0-0" or partition >= engine.config.partitions:
            continue
        stream = engine.keys.partition(partition).events()
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


# -- repair: PostgreSQL from the log (Redis's state minus the unapplied events) -----------------------------


@dataclass(slots=True)
class PostgresPlan:
    inventory: dict[str, tuple[Counters | None, Counters]]  # sku -> (now, target)
    new_products: dict[str, dict[str, Any]]  # sku -> Redis settings + target counters
    reservations: list[dict[str, Any]]  # rows to upsert, as Redis has them
    orders: list[dict[str, Any]]
    unrepairable: list[str]

    def describe(self) -> list[str]:
        lines = [
            f"{sku}: inventory {_fmt(now)} -> {_fmt(target)}" for sku, (now, target) in self.inventory.items()
        ]
        lines += [f"{sku}: product and inventory recreated from Redis" for sku in self.new_products]
        if self.reservations:
            lines.append(f"{len(self.reservations)} reservation row(s) written as Redis has them")
        if self.orders:
            lines.append(f"{len(self.orders)} order row(s) written as Redis has them")
        lines += [f"cannot repair: {u}" for u in self.unrepairable]
        return lines


def _ms(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def plan_postgres_from_stream(snap: Snapshot) -> PostgresPlan:
    """PostgreSQL's rows as the applied prefix of the log: Redis's state minus the unapplied events.

    Counters: Redis's minus the unapplied deltas. Reservation and order rows: as Redis has them, except
    the rows the unapplied events will write anyway (the worker writes those when it applies them).
    """
    r, pg = snap.redis, snap.postgres
    unapplied = r.unapplied_events()
    touched_reservations: set[str] = set()
    touched_orders: set[str] = set()
    deltas: dict[str, Counters] = defaultdict(Counters)
    for e in unapplied:
        deltas[e.sku].apply(e)
    if unapplied:
        # The worker's own folding says which rows the unapplied events will write: those it leaves alone.
        by_partition: dict[int, list[Event]] = defaultdict(list)
        for e in unapplied:
            by_partition[e.partition].append(e)
        for partition, events in by_partition.items():
            batch = Batch.fold(partition, events)
            touched_reservations |= set(batch.reservations)
            touched_orders |= set(batch.orders)

    plan = PostgresPlan({}, {}, [], [], [])
    for sku, sale in sorted(r.sales.items()):
        redis_c = _counters(sale)
        if redis_c is None:
            plan.unrepairable.append(f"{sku}: Redis's sale record lacks counters (use redis-from-postgres)")
            continue
        delta = deltas.get(sku, Counters())
        target = Counters(**{n: getattr(redis_c, n) - getattr(delta, n) for n in COUNTERS})
        product = pg.products.get(sku)
        now = (
            _counters({n: product[f"{n}_count"] for n in COUNTERS})
            if product and product["total_count"] is not None
            else None
        )
        if product is None:
            if any(e.sku == sku and e.type == "sale_loaded" for e in unapplied):
                continue  # the worker creates it when it applies the sale_loaded event
            plan.new_products[sku] = {**sale, **{n: getattr(target, n) for n in COUNTERS}}
        elif _fmt(now) != _fmt(target):
            plan.inventory[sku] = (now, target)
    for sku in sorted(set(pg.products) - set(r.sales)):
        plan.unrepairable.append(
            f"{sku} is in PostgreSQL but not in Redis (use --repair redis-from-postgres)"
        )

    wanted_open: set[str] = set()
    for holds in r.holds.values():
        for rid in holds:
            res = r.reservations.get(rid)
            if rid in touched_reservations or res is None:
                continue
            wanted_open.add(rid)
            row = pg.open_reservations.get(rid)
            if row is None or row.get("order_id") != res.get("order_id"):
                plan.reservations.append(_reservation_row(res))
    for rid in pg.open_reservations:
        if rid in wanted_open or rid in touched_reservations:
            continue
        res = r.reservations.get(rid)
        if res is None or res.get("status") == HOLDING:
            plan.unrepairable.append(f"reservation {rid} is open in PostgreSQL and unknown to Redis")
            continue
        plan.reservations.append(_reservation_row(res))
    for oid, order in r.orders.items():
        if oid in touched_orders:
            continue
        row = pg.orders.get(oid)
        if row is None and order.get("status") not in (*COUNTED_ORDERS, "PENDING"):
            continue  # a failed or cancelled order PostgreSQL does not count either way
        if row is None or row["status"] != order.get("status"):
            plan.orders.append(_order_row(order))
    for oid, row in pg.orders.items():
        if oid not in r.orders and oid not in touched_orders and row["status"] in COUNTED_ORDERS:
            plan.unrepairable.append(f"order {oid} counts as sold in PostgreSQL and is unknown to Redis")
    return plan


def _reservation_row(res: dict[Any, Any]) -> dict[str, Any]:
    status = res["status"]
    ended = _ms(res.get("ended_at"))
    return {
        "id": res["id"],
        "user": res["user"],
        "sku": res["sku"],
        "quantity": int(res["quantity"]),
        "status": status,
        "order_id": res.get("order_id") or None,
        "created_at": int(res["created_at"]),
        "expires_at": int(res["expires_at"]),
        "confirmed_at": ended if status == "CONFIRMED" else None,
        "ended_at": None if status == HOLDING else ended,
    }


def _order_row(order: dict[str, str]) -> dict[str, Any]:
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
        "transaction_id": order.get("transaction_id") or None,
        "failure_reason": order.get("failure_reason") if order["status"] == "FAILED" else None,
        "created_at": int(order["created_at"]),
    }


def apply_postgres_plan(engine: Engine, database_url: str, plan: PostgresPlan, snap: Snapshot) -> None:
    """One transaction: every row of the plan, or none."""
    q = queries()
    needed_reservations = {o["reservation_id"] for o in plan.orders} - {r["id"] for r in plan.reservations}
    with psycopg.connect(database_url) as conn, conn.transaction():
        for sku, values in plan.new_products.items():
            conn.execute(
                q["repair_insert_product"],
                {
                    "sku": sku,
                    "name": values["name"],
                    "price_cents": int(values["price_cents"]),
                    "flash_price_cents": int(values["flash_price_cents"]),
                    "per_user_limit": int(values["per_user_limit"]),
                    "starts_at": int(values["starts_at"]),
                    "ends_at": int(values["ends_at"]),
                    "reservation_ttl_ms": int(values["reservation_ttl_ms"]),
                    "paused": bool(int(values["paused"])),
                    "created_at": int(values["created_at"]),
                    **{n: int(values[n]) for n in COUNTERS},
                },
            )
        for sku, (_now, target) in plan.inventory.items():
            conn.execute(q["repair_set_inventory"], {"sku": sku, **{n: getattr(target, n) for n in COUNTERS}})
        # Orders point at reservations (and reservations back at orders, checked at commit).
        for rid in sorted(needed_reservations):
            res = engine.redis.hgetall(_reservation_key(engine, rid))
            if res:
                conn.execute(q["repair_upsert_reservation"], _reservation_row(res))
        for row in plan.reservations:
            conn.execute(q["repair_upsert_reservation"], row)
        for row in plan.orders:
            conn.execute(q["repair_upsert_order"], row)
    log.info(
        "event=postgres_repaired inventory=%d products=%d reservations=%d orders=%d",
        len(plan.inventory), len(plan.new_products), len(plan.reservations), len(plan.orders),
    )  # fmt: skip
