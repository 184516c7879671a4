"""Checks shared by the engine tests: the invariants of ARCHITECTURE.md read straight from Redis, the event
log, and a byte-for-byte picture of the keyspace to prove that a refused call changed nothing.

These read Redis with plain commands (through the engine's own key layout), never through the scripts, so
they judge the scripts instead of trusting them.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from engine import Engine, Event, Partition, partition_of, replay

T = TypeVar("T")

RESERVATION_STATUSES = {"RESERVED", "CONFIRMED", "CANCELLED", "EXPIRED"}
ORDER_STATUSES = {"PENDING", "CONFIRMED", "FAILED", "FULFILLED", "CANCELLED"}


def sku_in_partition(partition: int, partitions: int = 16, stem: str = "SKU") -> str:
    """A SKU id that hashes to the given partition (tests that need SKUs in distinct partitions)."""
    n = 0
    while partition_of(f"{stem}-{n}", partitions) != partition:
        n += 1
    return f"{stem}-{n}"


def keyspace(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type and full content: equal pictures mean nothing was written."""
    picture: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "string":
            value = client.get(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = (client.xlen(key), client.xrange(key))
        else:
            value = kind
        picture[key] = (kind, value)
    return picture


def stream_lengths(engine: Engine) -> list[int]:
    return [engine.redis.xlen(p.events()) for p in engine.keys.all()]


def all_events(engine: Engine) -> list[Event]:
    """Every event of every partition stream, each partition in stream order."""
    return [event for p in range(engine.config.partitions) for event in engine.read_events(p)]


def event_types(engine: Engine) -> Counter[str]:
    return Counter(event.type for event in all_events(engine))


def _scan(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(client.scan_iter(match=pattern, count=1000))


def _suffix(key: str, prefix: str) -> str:
    assert key.startswith(prefix), (key, prefix)
    return key[len(prefix) :]


def check_invariants(engine: Engine) -> None:
    """Invariants 1-3 of ARCHITECTURE.md, plus the agreement of every derived structure with the entities
    (counters == sums over reservations and orders, deadline sets == active holds, stream replay ==
    counters with no counter ever negative along the way). Raises AssertionError naming what broke."""
    r = engine.redis
    for p in engine.keys.all():
        _check_partition(engine, r, p)
    _check_replay(engine)


def _check_partition(engine: Engine, r: redis.Redis, p: Partition) -> None:
    sku_prefix = p.sku("")
    sales = {_suffix(k, sku_prefix): r.hgetall(k) for k in _scan(r, p.sku("*"))}
    res_prefix = p.reservation("")
    reservations = {_suffix(k, res_prefix): r.hgetall(k) for k in _scan(r, p.reservation("*"))}
    order_prefix = p.order("")
    orders = {_suffix(k, order_prefix): r.hgetall(k) for k in _scan(r, p.order("*"))}
    user_prefix = p.user("", "")[:-1]  # "fs:{pN}:user:"
    users: dict[tuple[str, str], dict[str, str]] = {}
    for key in _scan(r, p.user("*", "*")):
        sku, _, user = _suffix(key, user_prefix).partition(":")
        users[(sku, user)] = r.hgetall(key)
    deadlines = dict(r.zrange(p.deadlines(), 0, -1, withscores=True))
    assert set(r.smembers(p.catalog())) == set(sales), f"catalog of partition {p.index} != its sku hashes"

    reserved_by_sku: dict[str, int] = defaultdict(int)
    held: dict[tuple[str, str], int] = defaultdict(int)
    sold_by_sku: dict[str, int] = defaultdict(int)
    purchased: dict[tuple[str, str], int] = defaultdict(int)
    live_orders_of: dict[str, list[str]] = defaultdict(list)

    for rid, res in reservations.items():
        status, sku, user, qty = res["status"], res["sku"], res["user"], int(res["quantity"])
        assert status in RESERVATION_STATUSES, (rid, res)
        assert rid.startswith(f"rsv_{p.index}_"), rid
        holds = dict(r.zrange(p.holds(sku), 0, -1, withscores=True))
        if status == "RESERVED":
            reserved_by_sku[sku] += qty
            held[(sku, user)] += qty
            deadline = int(res.get("pay_until") or res["expires_at"])
            assert deadlines.get(rid) == deadline, f"active hold {rid} not at its deadline for the sweeper"
            assert holds.get(rid) == deadline, f"active hold {rid} not at its deadline in its sku's holds"
            if res.get("order_id"):
                order = orders.get(res["order_id"])
                assert order is not None, (rid, res)
                assert order["status"] == "PENDING", (rid, res, order)
                assert order["reservation_id"] == rid
        else:
            assert rid not in deadlines, f"ended reservation {rid} still has a deadline"
            assert rid not in holds, f"ended reservation {rid} still held for its sku"
            assert "pay_until" not in res, (rid, res)

    for oid, order in orders.items():
        status, rid = order["status"], order["reservation_id"]
        assert status in ORDER_STATUSES, (oid, order)
        res = reservations[rid]
        assert (order["sku"], order["user"], order["quantity"]) == (res["sku"], res["user"], res["quantity"])
        key = (order["sku"], order["user"])
        if status == "PENDING":
            assert res["status"] == "RESERVED", (oid, order, res)
            assert res.get("order_id") == oid, (oid, order, res)
        if status in ("CONFIRMED", "FULFILLED", "CANCELLED"):
            assert res["status"] == "CONFIRMED", (oid, order, res)
            assert res.get("order_id") == oid, (oid, order, res)
        if status in ("CONFIRMED", "FULFILLED"):
            sold_by_sku[order["sku"]] += int(order["quantity"])
            purchased[key] += int(order["quantity"])
        if status != "FAILED":
            live_orders_of[rid].append(oid)
    for rid, live in live_orders_of.items():
        assert len(live) == 1, f"reservation {rid} paid by more than one order: {live}"
    for rid, res in reservations.items():
        if res["status"] == "CONFIRMED":
            assert len(live_orders_of[rid]) == 1, f"confirmed reservation {rid} has no order"

    for rid in deadlines:
        assert reservations.get(rid, {}).get("status") == "RESERVED", f"stale deadline {rid}"

    for sku, sale in sales.items():
        a, rsv, s, t = (int(sale[f]) for f in ("available", "reserved", "sold", "total"))
        assert min(a, rsv, s, t) >= 0, (sku, sale)
        assert a + rsv + s == t, f"invariant 1 broken for {sku}: {a} + {rsv} + {s} != {t}"
        assert rsv == reserved_by_sku[sku], (sku, rsv, reserved_by_sku[sku])
        assert s == sold_by_sku[sku], (sku, s, sold_by_sku[sku])

    for key in set(users) | set(held) | set(purchased):
        counts = users.get(key, {})
        h, b = int(counts.get("held", 0)), int(counts.get("purchased", 0))
        assert (h, b) == (held[key], purchased[key]), (key, counts, held[key], purchased[key])
        assert min(h, b) >= 0, (key, counts)
        limit = int(sales[key[0]]["per_user_limit"])
        assert h + b <= limit, f"invariant 2 broken for {key}: {h} + {b} > {limit}"


def _check_replay(engine: Engine) -> None:
    events = all_events(engine)
    running: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for event in events:
        c = running[event.sku]
        c[0] += event.da
        c[1] += event.dr
        c[2] += event.ds
        c[3] += event.dt
        assert min(c) >= 0, f"replay goes negative for {event.sku} at event {event.id}: {c}"
    replayed = replay(events)
    sales = {sale.sku: sale for sale in engine.list_sales()}
    assert set(replayed) == set(sales)
    for sku, sale in sales.items():
        c = replayed[sku]
        assert (c.available, c.reserved, c.sold, c.total) == (
            sale.available,
            sale.reserved,
            sale.sold,
            sale.total,
        ), f"replay of the streams != counters in Redis for {sku}"


def run_together(*calls: Callable[[], T]) -> list[T | BaseException]:
    """Runs the calls on threads released at the same instant; each result or exception, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[T | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(i: int, call: Callable[[], T]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results
