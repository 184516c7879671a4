"""Checks shared by the engine tests: the invariants of ARCHITECTURE.md read straight from Redis, the event
log, and a byte-for-byte picture of the keyspace to prove that a refused call changed nothing.

These read Redis with plain commands (through the engine's own key layout), never through the scripts, so
they judge the scripts instead of trusting them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from flashsale.engine import Engine, Event, partition_of, replay
from flashsale.engine.events import effect, parse_entry
from flashsale.engine.models import record_values
from flashsale.engine.scripts import Script

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
    keys = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = pipe.execute()
    read = {
        "hash": pipe.hgetall,
        "string": pipe.get,
        "set": pipe.smembers,
        "zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
        "stream": pipe.xrange,
    }
    for key, kind in zip(keys, kinds, strict=True):
        read.get(kind, pipe.type)(key)
    return {key: (kind, value) for key, kind, value in zip(keys, kinds, pipe.execute(), strict=True)}


def stream_lengths(engine: Engine) -> list[int]:
    return [engine.redis.xlen(p.events()) for p in engine.keys.all()]


def all_events(engine: Engine, partitions: Iterable[int] | None = None) -> list[Event]:
    """Every event of every (or the given) partition streams, each partition in stream order."""
    chosen = range(engine.config.partitions) if partitions is None else partitions
    return [event for p in chosen for event in engine.read_events(p)]


def event_types(engine: Engine) -> Counter[str]:
    return Counter(event.type for event in all_events(engine))


@dataclass
class PartitionState:
    """Everything one partition holds in Redis, read in two round trips."""

    index: int
    sales: dict[str, dict[str, str]] = field(default_factory=dict)  # the sale's own fields
    catalog: set[str] = field(default_factory=set)
    holds: dict[str, dict[str, float]] = field(default_factory=dict)
    due: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # the holds lists: (id, deadline)
    users: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # held, purchased
    reservations: dict[str, dict[str, str]] = field(default_factory=dict)
    orders: dict[str, dict[str, str]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


# The reservation record's fields, in the order the scripts write them (lua/includes/reservations.lua).
RECORD_FIELDS = (
    "sku",
    "user",
    "quantity",
    "status",
    "created_at",
    "expires_at",
    "order_id",
    "pay_until",
    "ended_at",
)


def parse_record(record: str, *, open_hold: bool) -> dict[str, str]:
    """A record as the scripts must write it: an open hold's seven fields (status and ended_at left
    out), an ended reservation's nine (lua/includes/reservations.lua)."""
    values = record.split(" ")
    expected = len(RECORD_FIELDS) - 2 if open_hold else len(RECORD_FIELDS)
    kind = "open" if open_hold else "ended"
    assert len(values) == expected, f"malformed {kind} reservation record {record!r}"
    return dict(zip(RECORD_FIELDS, record_values(record), strict=True))


def _keys(engine: Engine, pattern: str) -> list[str]:
    """KEYS on the one node holding the pattern's hash tag (a cluster client sends KEYS to one node only,
    so it is aimed at the right one)."""
    if isinstance(engine.redis, redis.RedisCluster):
        node = engine.redis.get_node_from_key(pattern.replace("*", ""))
        return list(engine.redis.keys(pattern, target_nodes=node))
    return list(engine.redis.keys(pattern))


def read_partition(engine: Engine, index: int) -> PartitionState:
    p = engine.keys.partition(index)
    keys = sorted(_keys(engine, p.tag + "*"))  # fine on a test's small keyspace
    pipe = engine.redis.pipeline(transaction=False)
    kinds = []
    for key in keys:
        kind = key[len(p.tag) :].split(":", 1)[0]
        kinds.append(kind)
        if kind in ("sku", "order", "idem", "open"):
            pipe.hgetall(key)
        elif kind == "r":
            pipe.get(key)
        elif kind == "holds":
            pipe.zrange(key, 0, -1, withscores=True)
        elif kind == "due":
            pipe.lrange(key, 0, -1)
        elif kind == "skus":
            pipe.smembers(key)
        elif kind == "events":
            pipe.xrange(key)
        else:
            pipe.type(key)
    state = PartitionState(index)
    for key, kind, value in zip(keys, kinds, pipe.execute(), strict=True):
        name = key[len(p.tag) + len(kind) + 1 :]  # "" for the partition-wide keys (open, events, skus)
        if kind == "sku":
            state.sales[name] = {f: v for f, v in value.items() if not f.startswith(("h:", "b:"))}
            for f, v in value.items():
                if f.startswith(("h:", "b:")):
                    counts = state.users.setdefault((name, f[2:]), {"held": 0, "purchased": 0})
                    counts["held" if f.startswith("h:") else "purchased"] = int(v)
        elif kind == "r":
            assert name not in state.reservations, f"reservation {name} is both open and ended"
            ended = parse_record(value, open_hold=False)
            assert ended["status"] != "RESERVED", f"open reservation {name} has an ended record"
            state.reservations[name] = ended
        elif kind == "open":
            for rid, record in value.items():
                assert rid not in state.reservations, f"reservation {rid} is both open and ended"
                state.reservations[rid] = parse_record(record, open_hold=True)
        elif kind == "order":
            state.orders[name] = value
        elif kind == "holds":
            state.holds[name] = dict(value)
        elif kind == "due":
            entries = [entry.split(" ") for entry in value]
            assert all(len(e) == 2 for e in entries), f"malformed holds list entry in {key}: {value}"
            state.due[name] = [(rid, int(at)) for at, rid in entries]
        elif kind == "skus":
            state.catalog = set(value)
        elif kind == "events":
            state.events = [parse_entry(index, stream_id, fields) for stream_id, fields in value]
        else:
            assert kind == "idem", f"unexpected key {key} ({value})"
    return state


def check_invariants(engine: Engine, partitions: Iterable[int] | None = None) -> None:
    """Invariants 1-3 of ARCHITECTURE.md, plus the agreement of every derived structure with the entities
    (counters == sums over reservations and orders, every open hold indexed at its deadline, stream
    replay == counters with no counter ever negative along the way). Raises AssertionError naming what
    broke. Only the given partitions when some are named (the others must then be of no interest)."""
    for index in range(engine.config.partitions) if partitions is None else partitions:
        state = read_partition(engine, index)
        check_partition(state)


def check_partition(state: PartitionState) -> None:
    """The checks of check_invariants on one partition's snapshot."""
    _check_entities(state)
    _check_replay(state)


def _check_entities(state: PartitionState) -> None:
    sales, reservations, orders, users = state.sales, state.reservations, state.orders, state.users
    assert state.catalog == set(sales), f"catalog of partition {state.index} != its sku hashes"

    reserved_by_sku: dict[str, int] = defaultdict(int)
    held: dict[tuple[str, str], int] = defaultdict(int)
    sold_by_sku: dict[str, int] = defaultdict(int)
    purchased: dict[tuple[str, str], int] = defaultdict(int)
    live_orders_of: dict[str, list[str]] = defaultdict(list)

    for rid, res in reservations.items():
        status, sku, user, qty = res["status"], res["sku"], res["user"], int(res["quantity"])
        assert status in RESERVATION_STATUSES, (rid, res)
        assert rid.startswith(f"rsv_{state.index}_"), rid
        holds = state.holds.get(sku, {})
        queued = dict(state.due.get(sku, []))
        if status == "RESERVED":
            reserved_by_sku[sku] += qty
            held[(sku, user)] += qty
            paying = res["order_id"] != "-"
            deadline = int(res["pay_until"]) if paying else int(res["expires_at"])
            # Indexed at its deadline (lua/includes/holds.lua): in the holds set, or else in the holds list
            # at its expiry (a hold being paid for has its payment grace in the set).
            indexed = holds.get(rid) if rid in holds else None if paying else queued.get(rid)
            assert indexed == deadline, f"active hold {rid} not at its deadline in its sku's holds"
            # reserve.lua's sold-out refusal trusts due_first to come at or before every open hold's deadline
            due_first = sales.get(sku, {}).get("due_first")
            assert due_first is None or int(due_first) <= deadline, (
                f"due_first {due_first} of {sku} is after the deadline {deadline} of its hold {rid}"
            )
            assert res["ended_at"] == "0", (rid, res)
            if paying:
                order = orders.get(res["order_id"])
                assert order is not None, (rid, res)
                assert order["status"] == "PENDING", (rid, res, order)
                assert order["reservation_id"] == rid
            else:
                assert res["pay_until"] == "0", (rid, res)
        else:
            assert rid not in holds, f"ended reservation {rid} still held for its sku"
            assert res["pay_until"] == "0", (rid, res)
            assert res["ended_at"] != "0", (rid, res)

    for oid, order in orders.items():
        status, rid = order["status"], order["reservation_id"]
        assert status in ORDER_STATUSES, (oid, order)
        res = reservations[rid]
        assert (order["sku"], order["user"], order["quantity"]) == (res["sku"], res["user"], res["quantity"])
        key = (order["sku"], order["user"])
        if status == "PENDING":
            assert res["status"] == "RESERVED", (oid, order, res)
            assert res["order_id"] == oid, (oid, order, res)
        if status in ("CONFIRMED", "FULFILLED"):
            assert res["status"] == "CONFIRMED", (oid, order, res)
            assert res["order_id"] == oid, (oid, order, res)
            sold_by_sku[order["sku"]] += int(order["quantity"])
            purchased[key] += int(order["quantity"])
        if status == "CANCELLED":
            # From CONFIRMED (a bought hold) or from PENDING (the shopper cancelled while paying).
            assert res["status"] in ("CONFIRMED", "CANCELLED"), (oid, order, res)
            assert res["order_id"] == oid, (oid, order, res)
        if status != "FAILED":
            live_orders_of[rid].append(oid)
    for rid, live in live_orders_of.items():
        assert len(live) == 1, f"reservation {rid} paid by more than one order: {live}"
    for rid, res in reservations.items():
        if res["status"] == "CONFIRMED":
            assert len(live_orders_of[rid]) == 1, f"confirmed reservation {rid} has no order"

    for sku, holds in state.holds.items():
        for rid in holds:
            assert reservations.get(rid, {}).get("status") == "RESERVED", f"stale hold {rid} of {sku}"
    for sku, entries in state.due.items():
        deadlines = [at for _rid, at in entries]
        assert deadlines == sorted(deadlines), f"holds list of {sku} out of deadline order: {entries}"
        # reserve.lua appends after comparing with due_last rather than the list's last entry
        due_last = state.sales.get(sku, {}).get("due_last")
        assert not (deadlines and due_last is not None and int(due_last) < deadlines[-1]), (
            f"due_last {due_last} of {sku} is before its holds list's last deadline: {entries}"
        )

    for sku, sale in sales.items():
        a, rsv, s, t = (int(sale[f]) for f in ("available", "reserved", "sold", "total"))
        assert min(a, rsv, s, t) >= 0, (sku, sale)
        assert a + rsv + s == t, f"invariant 1 broken for {sku}: {a} + {rsv} + {s} != {t}"
        assert rsv == reserved_by_sku[sku], (sku, rsv, reserved_by_sku[sku])
        assert s == sold_by_sku[sku], (sku, s, sold_by_sku[sku])

    for key in set(users) | set(held) | set(purchased):
        counts = users.get(key, {})
        h, b = counts.get("held", 0), counts.get("purchased", 0)
        assert (h, b) == (held[key], purchased[key]), (key, counts, held[key], purchased[key])
        assert h > 0 or key not in users or b > 0, f"a zero count is kept for {key}: {counts}"
        assert min(h, b) >= 0, (key, counts)
        limit = int(sales[key[0]]["per_user_limit"])
        assert h + b <= limit, f"invariant 2 broken for {key}: {h} + {b} > {limit}"


def _check_replay(state: PartitionState) -> None:
    running: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for event in state.events:
        change = effect(event)
        c = running[event.sku]
        c[0] += change.available
        c[1] += change.reserved
        c[2] += change.sold
        c[3] += change.total
        assert min(c) >= 0, f"replay goes negative for {event.sku} at event {event.id}: {c}"
    replayed = replay(state.events)
    assert set(replayed) == set(state.sales), "the stream's SKUs != the partition's sales"
    for sku, sale in state.sales.items():
        c = replayed[sku]
        counters = tuple(int(sale[f]) for f in ("available", "reserved", "sold", "total"))
        assert (c.available, c.reserved, c.sold, c.total) == counters, (
            f"replay != counters in Redis for {sku}"
        )


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


# Put before a script, this Lua makes every redis.call / redis.pcall of the script first check that the
# command's keys are among the call's KEYS, and stop the script (before the command runs) with
# UNDECLARED_KEY otherwise: the rule Redis Cluster enforces only mid-migration, enforced on every call.
# A command not listed here stops the script too, so a script using a new one makes the list grow.
_CHECK_KEYS_LUA = """
local flashsaleRedis = redis
local declaredKeys = {}
for i = 1, #KEYS do declaredKeys[KEYS[i]] = true end
local FIRST_ARG_IS_THE_KEY = {}
for _, name in ipairs({'GET', 'SET', 'HDEL', 'HEXISTS', 'HGET', 'HGETALL', 'HINCRBY', 'HMGET', 'HSET',
  'HVALS', 'HSETNX', 'LINDEX', 'LRANGE', 'LTRIM', 'PERSIST', 'PEXPIRE', 'PEXPIREAT', 'RPUSH', 'SADD',
  'SMEMBERS', 'XADD', 'XLEN', 'ZADD', 'ZCARD', 'ZCOUNT', 'ZPOPMIN', 'ZRANGE', 'ZRANGEBYSCORE', 'ZRANK',
  'ZREM', 'ZREMRANGEBYSCORE', 'ZSCORE'}) do
  FIRST_ARG_IS_THE_KEY[name] = true
end
local function checkKeys(command, ...)
  local name, args = string.upper(command), {...}
  local keys
  if name == 'TIME' or name == 'PUBLISH' then
    keys = {}
  elseif name == 'DEL' then
    keys = args
  elseif name == 'ZUNIONSTORE' then
    keys = {args[1]}
    for i = 1, tonumber(args[2]) do keys[#keys + 1] = args[2 + i] end
  elseif FIRST_ARG_IS_THE_KEY[name] then
    keys = {args[1]}
  else
    error('UNCHECKED_COMMAND ' .. name)
  end
  for _, key in ipairs(keys) do
    if not declaredKeys[key] then error('UNDECLARED_KEY ' .. name .. ' ' .. tostring(key)) end
  end
end
local redis = setmetatable({
  call = function(...) checkKeys(...) return flashsaleRedis.call(...) end,
  pcall = function(...) checkKeys(...) return flashsaleRedis.pcall(...) end,
}, {__index = flashsaleRedis})
"""


def scripts_checking_keys(scripts: dict[str, Script]) -> dict[str, Script]:
    """The engine's scripts, each stopping with UNDECLARED_KEY at the first key it touches that is not in
    its KEYS (see _CHECK_KEYS_LUA): give them to an engine (``engine.scripts = ...``) and load them."""
    checked = {}
    for name, script in scripts.items():
        source = _CHECK_KEYS_LUA + script.source
        checked[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return checked
