"""A consistent snapshot of both stores: PostgreSQL first, then each partition of Redis cut at PostgreSQL's
applied offset, so that Redis == PostgreSQL + the unapplied events holds exactly when nothing drifted.

PostgreSQL is read in one repeatable-read transaction. Each Redis partition is read in one MULTI on the
node that serves it (one Redis, or the partition's master on a Redis Cluster, where all of a partition's
keys share one slot): its sales (counters, settings, user counts), waiting rooms (settings, counts, line and
admissions), open holds, reservation and order records, and the stream after the applied offset. The
record keys are listed (SCAN on that node) just before; a record created in between shows up as an
unapplied event without its record, and the partition is read again. The whole snapshot is taken again
while the worker moves an offset in between.

A node that does not answer is named with its partitions (``RedisState.unreadable``) and its partitions
are left out of both stores' states, so the rest is still checked; the caller decides that such a
snapshot is incomplete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from flashsale.engine import Engine
from flashsale.engine.events import parse_entry
from flashsale.engine.keys import Partition, partition_of
from flashsale.engine.models import SALE_FIELDS, record_values
from flashsale.engine.nodes import node_clients, partition_nodes
from flashsale.writeback.database import queries

from .state import (
    COUNTERS,
    PostgresState,
    Record,
    RedisState,
    RoomLine,
    Snapshot,
    StoreState,
    UnreadableNode,
    cutoff,
)

log = logging.getLogger("flashsale.reconcile")

ATTEMPTS = 5

# Progress: (phase description, units done, units in total).
Progress = Callable[[str, int, int], None]


def no_progress(phase: str, done: int, total: int) -> None:
    return None


class ReconcileError(RuntimeError):
    """Reconciliation could not run (a store unreachable, an unmigrated database); one sentence."""


# -- PostgreSQL ---------------------------------------------------------------------------------------------


def _sale_from_product(row: dict[str, Any]) -> Record:
    return {
        "sku": row["sku_id"],
        "name": row["name"],
        "price_cents": int(row["base_price_cents"]),
        "flash_price_cents": int(row["flash_sale_price_cents"]),
        "per_user_limit": int(row["per_user_limit"]),
        "starts_at": int(row["starts_at"]),
        "ends_at": int(row["ends_at"]),
        "reservation_ttl_ms": int(row["reservation_ttl_ms"]),
        "paused": bool(row["paused"]),
        "created_at": int(row["created_at"]),
        "updated_at": int(row["updated_at"]),
        "total": row["total_count"],
        "available": row["available_count"],
        "reserved": row["reserved_count"],
        "sold": row["sold_count"],
        "moving": row["moving_count"],
        "buckets": int(row["buckets"]),
    }


def _room_from_row(row: dict[str, Any]) -> Record:
    return {
        "on": bool(row["is_on"]),
        "opens_at": int(row["opens_at"]),
        "admit_per_s": int(row["admit_per_second"]),
        "stock_factor": int(row["stock_factor"]),
        "admission_ttl_ms": int(row["admission_ttl_ms"]),
        "admitted": int(row["admitted"]),
        "sent_away": int(row["sent_away"]),
    }


def _reservation_from_row(row: dict[str, Any]) -> Record:
    return {
        "id": row["reservation_id"],
        "sku": row["sku_id"],
        "user": row["user_id"],
        "quantity": int(row["quantity"]),
        "status": row["status"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "order_id": row["order_id"],
        "pay_until": row["pay_until"],
        "confirmed_at": row["confirmed_at"],
        "ended_at": row["ended_at"],
    }


def _order_from_row(row: dict[str, Any]) -> Record:
    return {
        "id": row["order_id"],
        "reservation_id": row["reservation_id"],
        "sku": row["sku_id"],
        "user": row["user_id"],
        "quantity": int(row["quantity"]),
        "unit_price_cents": int(row["unit_price_cents"]),
        "total_cents": int(row["total_price_cents"]),
        "status": row["status"],
        "payment_method": row["payment_method"],
        "transaction_id": row["transaction_id"],
        "failure_reason": row["failure_reason"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def read_postgres(conn: psycopg.Connection[Any], cutoff_ms: int) -> PostgresState:
    """PostgreSQL's state: the entities Redis must hold at ``cutoff_ms`` and what its rows add up to."""
    q = queries()
    state = PostgresState()
    with conn.cursor(row_factory=dict_row) as cur:
        state.offsets = {
            int(r["partition"]): str(r["applied_id"]) for r in cur.execute(q["reconcile_offsets"])
        }
        state.sales = {r["sku_id"]: _sale_from_product(r) for r in cur.execute(q["reconcile_products"])}
        state.rooms = {r["sku_id"]: _room_from_row(r) for r in cur.execute(q["reconcile_waiting_rooms"])}
        cutoff = {"cutoff": cutoff_ms}
        for row in cur.execute(q["reconcile_reservations"], cutoff):
            state.reservations[row["reservation_id"]] = _reservation_from_row(row)
        for row in cur.execute(q["reconcile_orders"], cutoff):
            state.orders[row["order_id"]] = _order_from_row(row)
        for row in cur.execute(q["reconcile_user_counts"]):
            state.users[(row["sku_id"], row["user_id"])] = (int(row["held"]), int(row["bought"]))
        for row in cur.execute(q["reconcile_sku_sums"]):
            state.sums[row["sku_id"]] = (int(row["reserved"]), int(row["sold"]))
    return state


def read_offsets(conn: psycopg.Connection[Any]) -> dict[int, str]:
    return {int(p): str(applied) for p, applied in conn.execute(queries()["reconcile_offsets"])}


# -- Redis --------------------------------------------------------------------------------------------------


def reservation_from_record(reservation_id: str, value: str) -> Record:
    """A reservation record (lua/includes/reservations.lua) as the shared record shape."""
    sku, user, quantity, status, created_at, expires_at, order_id, pay_until, ended_at = record_values(value)
    ended = int(ended_at) or None
    return {
        "id": reservation_id,
        "sku": sku,
        "user": user,
        "quantity": int(quantity),
        "status": status,
        "created_at": int(created_at),
        "expires_at": int(expires_at),
        "order_id": None if order_id == "-" else order_id,
        "pay_until": int(pay_until) or None,
        "confirmed_at": ended if status == "CONFIRMED" else None,
        "ended_at": ended,
    }


def _due_entry(entry: str) -> tuple[str, int]:
    """A holds list's entry "<deadline ms> <reservation id>" (lua/includes/holds.lua) as (id, deadline)."""
    deadline, _, rid = entry.partition(" ")
    return rid, int(deadline)


def order_from_hash(fields: dict[str, str]) -> Record:
    return {
        "id": fields["id"],
        "reservation_id": fields["reservation_id"],
        "sku": fields["sku"],
        "user": fields["user"],
        "quantity": int(fields["quantity"]),
        "unit_price_cents": int(fields["unit_price_cents"]),
        "total_cents": int(fields["total_cents"]),
        "status": fields["status"],
        "payment_method": fields["payment_method"],
        "transaction_id": fields.get("transaction_id") or None,
        "failure_reason": fields.get("failure_reason") or None,
        "created_at": int(fields["created_at"]),
        "updated_at": int(fields["updated_at"]),
    }


def sale_from_hash(fields: dict[str, str]) -> tuple[Record, dict[str, tuple[int, int]]]:
    """A SKU hash: its sale (settings and counters), and its users' counts (h:<user>, b:<user>)."""
    sale: Record = {}
    for name in SALE_FIELDS:
        value = fields.get(name)
        if name in ("sku", "name"):
            sale[name] = value
        elif name == "paused":
            sale[name] = value == "1"
        else:
            sale[name] = None if value is None else int(value)
    # A stock bucket (engine/buckets.py): units it received minus those it gave; summed over a SKU's
    # buckets, minus that is what is moving between two of them.
    sale["moving"] = -int(fields.get("moved") or 0)
    sale["bucket"] = int(fields.get("bucket") or 0)
    sale["buckets"] = int(fields.get("buckets") or 1)
    users: dict[str, list[int]] = {}
    for name, value in fields.items():
        if name.startswith(("h:", "b:")):
            counts = users.setdefault(name[2:], [0, 0])
            counts[0 if name[0] == "h" else 1] = int(value)
    return sale, {user: (c[0], c[1]) for user, c in users.items()}


# The waiting room's counts in its hash (lua/queue_admit.lua): what the log carries, then Redis's own.
ROOM_HASH_FIELDS = ("admitted", "sent_away", "lapsed", "used")


def room_from_hash(fields: dict[str, str], counts: list[str | None]) -> Record | None:
    """A waiting room as the shared record shape, from its SKU hash's fields and its room hash's counts
    (ROOM_HASH_FIELDS); None when the SKU has neither settings nor counts."""
    admitted, sent_away = (int(c or 0) for c in counts[:2])
    if fields.get("waiting_room") is None and not admitted and not sent_away:
        return None

    def number(name: str) -> int | None:
        value = fields.get(name)
        return None if value is None else int(value)

    on = fields.get("waiting_room")
    return {
        "on": None if on is None else on == "1",
        "opens_at": number("wr_opens_at"),
        "admit_per_s": number("wr_rate"),
        "stock_factor": number("wr_stock_factor"),
        "admission_ttl_ms": number("wr_admission_ttl_ms"),
        "admitted": admitted,
        "sent_away": sent_away,
    }


def _with_bucket(sale: Record | None, bucket: Record) -> Record:
    """A SKU's sale so far with one more of its stock buckets read (engine/buckets.py): counters summed,
    settings bucket 0's; a SKU without buckets is its one hash."""
    if sale is None:
        return bucket
    first, other = (bucket, sale) if bucket["bucket"] == 0 else (sale, bucket)
    merged = dict(first)
    for name in (*COUNTERS, "moving"):
        if first.get(name) is not None and other.get(name) is not None:
            merged[name] = int(first[name]) + int(other[name])
    return merged


def _scan(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(str(k) for k in client.scan_iter(match=pattern, count=1000))


def _read_partition(client: redis.Redis, p: Partition, applied: str, state: RedisState) -> bool:
    """One partition in one MULTI on the node that serves it; False when an unapplied event names a
    record the listing missed."""
    skus = sorted(str(s) for s in client.smembers(p.catalog()))
    record_keys = _scan(client, p.reservation("*"))  # ended reservations (open ones: the open hash)
    order_keys = _scan(client, p.order("*"))
    pipe = client.pipeline(transaction=True)
    pipe.time()  # the moment of this read: which admissions are live in it
    for sku in skus:
        pipe.hgetall(p.sku(sku))
        pipe.zrange(p.holds(sku), 0, -1, withscores=True)
        pipe.lrange(p.due(sku), 0, -1)
        pipe.hmget(p.waiting_room(sku), ROOM_HASH_FIELDS)
        pipe.zrange(p.queue(sku), 0, -1)
        pipe.hlen(p.queue_joined(sku))
        pipe.zrange(p.admitted(sku), 0, -1, withscores=True)
    pipe.xrange(p.events(), f"({applied}" if applied != "0-0" else "-", "+")
    pipe.hgetall(p.open_holds())
    for key in record_keys:
        pipe.get(key)
    for key in order_keys:
        pipe.hgetall(key)
    replies = pipe.execute()
    seconds, micros = replies[0]
    read_at = int(seconds) * 1000 + int(micros) // 1000
    at = 1
    for sku in skus:
        fields, holds, due, room_counts, line, join_times, admissions = replies[at : at + 7]
        at += 7
        if fields:
            sale, users = sale_from_hash(fields)
            state.sales[sku] = _with_bucket(state.sales.get(sku), sale)
            for user, (held, bought) in users.items():  # a user's counts are in their home bucket
                before = state.users.get((sku, user), (0, 0))
                state.users[(sku, user)] = (before[0] + held, before[1] + bought)
        state.holds.setdefault(sku, {}).update({str(rid): int(deadline) for rid, deadline in holds})
        state.due[(sku, p.index)] = [_due_entry(str(entry)) for entry in due]
        if fields.get("due_first") is not None:
            state.due_first[(sku, p.index)] = int(fields["due_first"])
        room = room_from_hash(fields, room_counts)
        if room is not None:
            state.rooms[sku] = room
        if room is not None or line or admissions:
            state.lines[sku] = RoomLine(
                line={str(user) for user in line},
                join_times=int(join_times),
                admissions={str(user): int(score) for user, score in admissions},
                lapsed=int(room_counts[2] or 0),
                used=int(room_counts[3] or 0),
                read_at=read_at,
            )
    events = [parse_entry(p.index, sid, fields) for sid, fields in replies[at]]
    state.unapplied[p.index] = events
    open_records = replies[at + 1]
    for rid, value in open_records.items():
        state.reservations[rid] = reservation_from_record(rid, value)
    at += 2
    prefix = len(p.reservation(""))
    for key, value in zip(record_keys, replies[at : at + len(record_keys)], strict=True):
        if value is not None:
            state.reservations[key[prefix:]] = reservation_from_record(key[prefix:], value)
    at += len(record_keys)
    for fields in replies[at:]:
        if fields and "id" in fields:
            state.orders[fields["id"]] = order_from_hash(fields)
    created = {e.reservation_id for e in events if e.type == "reserved"}
    created |= {e.order_id for e in events if e.type == "checkout_started"}
    known = set(open_records) | {key[prefix:] for key in record_keys}
    known |= {key[len(p.order("")) :] for key in order_keys}
    return created <= known


def redis_now_ms(clients: dict[str, redis.Redis]) -> int:
    """Redis's clock, from the first node that answers (one clock for the whole snapshot)."""
    errors = []
    for name, client in sorted(clients.items()):
        try:
            seconds, micros = client.time()
        except redis.RedisError as error:
            errors.append(f"{name}: {error}")
            continue
        return int(seconds) * 1000 + int(micros) // 1000
    raise ReconcileError(f"cannot read Redis: no node answered ({'; '.join(errors) or 'no nodes'})")


def read_redis(engine: Engine, offsets: dict[int, str], progress: Progress = no_progress) -> RedisState:
    """Every partition, node by node (on one Redis: the one node). A node that does not answer is left
    out whole and named in ``unreadable``: the other nodes' partitions are still read."""
    state = RedisState()
    nodes = partition_nodes(engine.redis, engine.keys)
    clients = node_clients(engine.redis)
    state.now_ms = redis_now_ms(clients)
    state.nodes = {p: node.name for node in nodes for p in node.partitions}
    total, done = len(state.nodes), 0
    for node in nodes:
        client = clients.get(node.name)
        try:
            if client is None:
                raise redis.ConnectionError("the cluster client has no connection to it")
            for index in node.partitions:
                progress("partitions", done, total)
                p = engine.keys.partition(index)
                for _attempt in range(ATTEMPTS):
                    if _read_partition(client, p, offsets.get(p.index, "0-0"), state):
                        break
                    log.info("event=reconcile_retry partition=%d reason=records_created_while_listing", index)
                done += 1
        except redis.RedisError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            state.unreadable.append(UnreadableNode(node.name, node.partitions, reason))
            done += len([i for i in node.partitions if i not in state.unapplied])
            log.warning(
                "event=reconcile_node_unreadable node=%s partitions=%s error=%r",
                node.name, ",".join(map(str, node.partitions)), reason,
            )  # fmt: skip
    progress("partitions", total, total)
    if state.unreadable:
        _leave_out(state, {i for u in state.unreadable for i in u.partitions}, len(state.nodes))
    return state


def _leave_out(state: StoreState, partitions: set[int], count: int) -> None:
    """Drops what the given partitions hold from a store's state (their node could not be read, so
    neither store is compared there)."""

    # A SKU split into stock buckets is left out when any of its buckets' partitions is.
    buckets = {sku: int(sale.get("buckets") or 1) for sku, sale in state.sales.items()}

    def gone(sku: object) -> bool:
        first = partition_of(str(sku), count)
        return any((first + b) % count in partitions for b in range(buckets.get(str(sku), 1)))

    state.sales = {sku: sale for sku, sale in state.sales.items() if not gone(sku)}
    state.users = {key: counts for key, counts in state.users.items() if not gone(key[0])}
    state.reservations = {k: r for k, r in state.reservations.items() if not gone(r["sku"])}
    state.orders = {k: o for k, o in state.orders.items() if not gone(o["sku"])}
    state.rooms = {sku: room for sku, room in state.rooms.items() if not gone(sku)}
    if isinstance(state, RedisState):
        state.holds = {sku: holds for sku, holds in state.holds.items() if not gone(sku)}
        state.due = {key: due for key, due in state.due.items() if not gone(key[0])}
        state.lines = {sku: line for sku, line in state.lines.items() if not gone(sku)}
        state.unapplied = {p: events for p, events in state.unapplied.items() if p not in partitions}
    if isinstance(state, PostgresState):
        state.sums = {sku: sums for sku, sums in state.sums.items() if not gone(sku)}


def snapshot(engine: Engine, database_url: str, progress: Progress = no_progress) -> Snapshot:
    """Both stores, PostgreSQL first; taken again while the worker moved an offset in between."""
    try:
        window_start = cutoff(redis_now_ms(node_clients(engine.redis)))
        # Autocommit: each attempt's transaction is its own (a second ``conn.transaction()`` after the
        # offsets were read would otherwise be a savepoint that cannot set its isolation level).
        with psycopg.connect(database_url, connect_timeout=10, autocommit=True) as conn:
            for _attempt in range(ATTEMPTS):
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    pg = read_postgres(conn, window_start)
                redis_state = read_redis(engine, pg.offsets, progress)
                if redis_state.unreadable:
                    left_out = {i for u in redis_state.unreadable for i in u.partitions}
                    _leave_out(pg, left_out, len(redis_state.nodes))
                if read_offsets(conn) == pg.offsets:
                    return Snapshot(redis_state, pg)
                log.info("event=reconcile_retry reason=worker_advanced_offsets")
            log.warning("event=reconcile_unstable attempts=%d", ATTEMPTS)
            return Snapshot(redis_state, pg)
    except psycopg.errors.UndefinedTable:
        raise ReconcileError("the database is not migrated: run `flashsale db migrate` first") from None
    except psycopg.OperationalError as error:
        raise ReconcileError(f"cannot reach PostgreSQL: {str(error).strip().splitlines()[0]}") from None
    except redis.RedisError as error:
        raise ReconcileError(f"cannot read Redis: {error}") from None


__all__ = ["Progress", "ReconcileError", "no_progress", "read_redis", "redis_now_ms", "snapshot"]
