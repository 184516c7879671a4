"""The checks: every invariant of ARCHITECTURE.md that the two stores and the stream can show.

Across the stores (invariant 5): Redis == PostgreSQL + the unapplied events, for every SKU's counters and
settings, every user's counts, and every reservation and order Redis must hold (open ones, and ended ones
within the retention period), so a Redis restored from an old copy shows the records it lost. Within each
store: counts add up and are never negative (1), no user is past the per-user limit (2), and the rows agree
with the counters (open holds with `reserved`; in Redis also each open hold indexed by its SKU's holds list or
set at or before its deadline; in PostgreSQL counted orders with `sold`).

Waiting rooms: their settings and the counts the log carries (admitted, sent away) across the stores, and in
Redis the line against the admissions: nobody both in line and admitted (a live admission), a join time for
everyone in line, and no more admission records than admissions counted.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flashsale.engine.events import Counters, effect
from flashsale.engine.keys import ENTITY_ID

from .state import (
    COUNTERS,
    OPEN,
    ROOM_COUNTS,
    ROOM_SETTINGS,
    SETTINGS,
    Record,
    Snapshot,
    UnreadableNode,
    counters,
    deadline,
    fmt,
    in_window,
    room_text,
)
from .target import expected_redis

RESERVATION_FIELDS = (
    "sku",
    "user",
    "quantity",
    "status",
    "created_at",
    "expires_at",
    "order_id",
    "confirmed_at",
    "ended_at",
)
ORDER_FIELDS = (
    "reservation_id",
    "sku",
    "user",
    "quantity",
    "unit_price_cents",
    "total_cents",
    "status",
    "payment_method",
    "transaction_id",
    "failure_reason",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True, slots=True)
class Drift:
    """One broken invariant: where, which check, what it should be and what it is."""

    sku: str
    check: str
    where: str  # redis | postgres | log (Redis against PostgreSQL + the unapplied events)
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
    node: str | None = None  # the Redis node serving the SKU's partition (host:port)
    # Its waiting room, when either store or the unapplied events have one.
    room_redis: Record | None = None
    room_postgres: Record | None = None
    room_unapplied: tuple[int, int] = (0, 0)  # admitted, sent away by the unapplied events
    line: int = 0  # shoppers in line now (Redis)
    admissions: int = 0  # admission records now (Redis)

    @property
    def has_room(self) -> bool:
        return self.room_redis is not None or self.room_postgres is not None or any(self.room_unapplied)

    def as_dict(self) -> dict[str, Any]:
        def counts(c: Counters | None) -> dict[str, int] | None:
            return None if c is None else {name: getattr(c, name) for name in COUNTERS}

        return {
            "sku": self.sku,
            "node": self.node,
            "redis": counts(self.redis),
            "postgres": counts(self.postgres),
            "unapplied_deltas": counts(self.unapplied),
            "unapplied_events": self.unapplied_events,
            "active_reservations": self.holds,
            "waiting_room": self.room_dict(),
            "drift": self.drift,
        }

    def room_dict(self) -> dict[str, Any] | None:
        if not self.has_room:
            return None
        admitted, sent_away = self.room_unapplied
        return {
            "redis": self.room_redis,
            "postgres": self.room_postgres,
            "unapplied_counts": {"admitted": admitted, "sent_away": sent_away},
            "line": self.line,
            "admissions": self.admissions,
        }


@dataclass(slots=True)
class Report:
    skus: list[SkuView]
    drifts: list[Drift]
    offsets: dict[int, str]
    unapplied_events: int
    checked_reservations: int = 0
    checked_orders: int = 0
    nodes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # node -> its partitions
    unreadable: list[UnreadableNode] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every node was read: no partition was left out of the checks."""
        return not self.unreadable

    @property
    def ok(self) -> bool:
        return not self.drifts and self.complete

    def node_summaries(self) -> list[dict[str, Any]]:
        """Per node: its partitions, whether it answered, and its SKUs, unapplied events and drift."""
        down = {u.node: u for u in self.unreadable}
        rows = []
        for node, partitions in sorted(self.nodes.items()):
            views = [v for v in self.skus if v.node == node]
            rows.append(
                {
                    "node": node,
                    "partitions": list(partitions),
                    "read": node not in down,
                    "error": down[node].error if node in down else None,
                    "skus": len(views),
                    "unapplied_events": sum(v.unapplied_events for v in views),
                    "drift": sum(v.drift for v in views),
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "unreadable_nodes": [u.as_dict() for u in self.unreadable],
            "nodes": self.node_summaries(),
            "drift_count": len(self.drifts),
            "drift": [d.as_dict() for d in self.drifts],
            "skus": [s.as_dict() for s in self.skus],
            "applied_offsets": {str(p): applied for p, applied in sorted(self.offsets.items())},
            "unapplied_events": self.unapplied_events,
            "checked_reservations": self.checked_reservations,
            "checked_orders": self.checked_orders,
        }


def _none(value: Any) -> Any:
    return None if value == "" else value


def _describe(record: Record | None, names: tuple[str, ...]) -> str:
    if record is None:
        return "missing"
    return " ".join(f"{n}={_none(record.get(n))}" for n in names if _none(record.get(n)) is not None)


def _store_checks(
    sku: str, where: str, c: Counters | None, open_units: int, sold_units: int | None
) -> list[Drift]:
    """Invariant 1 in one store, and its rows agreeing with its counters."""
    if c is None:
        return []
    found = []
    if c.available + c.reserved + c.sold + c.moving != c.total:
        found.append(Drift(sku, "counts_add_up", where, "available+reserved+sold+moving == total", fmt(c)))
    if any(getattr(c, n) < 0 for n in COUNTERS):
        found.append(Drift(sku, "nothing_negative", where, "all >= 0", fmt(c)))
    if open_units != c.reserved:
        found.append(Drift(sku, "open_holds_match_reserved", where, str(c.reserved), str(open_units)))
    if sold_units is not None and sold_units != c.sold:
        found.append(Drift(sku, "orders_match_sold", where, str(c.sold), str(sold_units)))
    return found


def _limit_checks(
    where: str, users: dict[tuple[str, str], tuple[int, int]], sales: dict[str, Record]
) -> list[Drift]:
    found = []
    for (sku, user), (held, bought) in sorted(users.items()):
        sale = sales.get(sku)
        actual = f"held={held} purchased={bought}"
        if held < 0 or bought < 0:
            found.append(Drift(sku, "nothing_negative", where, f"user {user} held, purchased >= 0", actual))
        if sale is not None and sale.get("per_user_limit") and held + bought > int(sale["per_user_limit"]):
            found.append(
                Drift(sku, "per_user_limit", where, f"user {user} <= {sale['per_user_limit']}", actual)
            )
    return found


def _holds_checks(snap: Snapshot) -> list[Drift]:
    """Redis's deadline indexes (lua/includes/holds.lua): the holds sorted set lists only open
    reservations, each at its deadline; each holds list runs in deadline order; and every open
    reservation is in one or the other at or before its deadline (else it would end late). A list entry
    of a hold that ended, or whose deadline moved later, is no drift: the list's head drops it. And the
    SKU hash's due_first comes at or before every open hold's deadline (else a sold-out refusal would
    miss a lapsed hold until the sweeper ends it)."""
    r = snap.redis
    found = []
    listed = {rid: (sku, score) for sku, holds in r.holds.items() for rid, score in holds.items()}
    for rid, (sku, score) in sorted(listed.items()):
        record = r.reservations.get(rid)
        if record is None or record["status"] != OPEN or record["sku"] != sku:
            actual = "missing" if record is None else f"{record['status']} of {record['sku']}"
            found.append(Drift(sku, "open_hold_has_reservation", "redis", f"{rid} RESERVED", actual))
        elif deadline(record) != score:
            found.append(
                Drift(sku, "hold_at_its_deadline", "redis", f"{rid} at {deadline(record)}", str(score))
            )
    queued: dict[str, int] = {}
    for (sku, _partition), entries in sorted(r.due.items()):  # each stock bucket's list on its own
        for (_rid, at), (later, later_at) in itertools.pairwise(entries):
            if later_at < at:
                found.append(
                    Drift(sku, "holds_list_in_order", "redis", f"{later} at or after {at}", str(later_at))
                )
        for rid, at in entries:
            queued[rid] = min(at, queued.get(rid, at))
    earliest: dict[tuple[str, int], tuple[int, str]] = {}  # (sku, partition) -> its first open hold
    for rid, record in r.reservations.items():
        minted = ENTITY_ID.fullmatch(rid)
        if record["status"] == OPEN and minted:
            where = (record["sku"], int(minted.group(2)))
            earliest[where] = min(earliest.get(where, (deadline(record), rid)), (deadline(record), rid))
    for (sku, partition), bound in sorted(r.due_first.items()):
        first = earliest.get((sku, partition))
        if first is not None and bound > first[0]:
            found.append(
                Drift(sku, "due_first_bound", "redis", f"due_first <= {first[0]} ({first[1]})", str(bound))
            )
    for rid, record in sorted(r.reservations.items()):
        if record["status"] != OPEN:
            continue
        if rid in listed:
            continue
        if rid not in queued:
            found.append(
                Drift(record["sku"], "open_hold_listed", "redis", f"{rid} in its holds", "not listed")
            )
        elif queued[rid] > deadline(record):
            found.append(
                Drift(
                    record["sku"],
                    "hold_at_its_deadline",
                    "redis",
                    f"{rid} at or before {deadline(record)}",
                    str(queued[rid]),
                )
            )
    return found


def _room_checks(snap: Snapshot, target: dict[str, Record]) -> list[Drift]:
    """Each waiting room's settings and counts: Redis against PostgreSQL + the unapplied events."""
    have_rooms = snap.redis.rooms
    found = []
    for sku in sorted(set(have_rooms) | set(target)):
        want, have = target.get(sku), have_rooms.get(sku)
        for check_name, names in (
            ("waiting_room_settings_match", ROOM_SETTINGS),
            ("waiting_room_counts_match", ROOM_COUNTS),
        ):
            if want is None or have is None:
                if check_name.endswith("counts_match"):
                    continue  # a room missing on one side is one finding, not two
                diff = names
            else:
                diff = tuple(n for n in names if want.get(n) != have.get(n))
            if diff:
                found.append(Drift(sku, check_name, "log", room_text(want, diff), room_text(have, diff)))
    return found


def _line_checks(snap: Snapshot) -> list[Drift]:
    """Redis's own waiting rooms: the line and the admissions agree with each other and with the counts."""
    found = []
    for sku, line in sorted(snap.redis.lines.items()):
        both = line.admitted_in_line()
        if both:
            shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
            found.append(
                Drift(sku, "nobody_in_line_and_admitted", "redis", "nobody", f"{len(both)}: {shown}")
            )
        if line.join_times != len(line.line):
            found.append(
                Drift(
                    sku,
                    "line_has_join_times",
                    "redis",
                    f"{len(line.line)} join time(s), one per shopper in line",
                    str(line.join_times),
                )
            )
        # Every admission record (live, lapsed, used and dropped) was counted when it was made; a shopper
        # who re-joins after a lapse may drop a record uncounted, so the records are at most the count.
        room = snap.redis.rooms.get(sku)
        counted = int(room["admitted"]) if room is not None else 0
        records = len(line.admissions) + line.lapsed + line.used
        if records > counted:
            found.append(
                Drift(
                    sku,
                    "admissions_counted",
                    "redis",
                    f"admission records (live + lapsed + used) <= admitted={counted}",
                    f"{len(line.admissions)} + {line.lapsed} + {line.used} = {records}",
                )
            )
    return found


def _entity_checks(
    kind: str, redis_records: dict[str, Record], expected: dict[str, Record], cutoff_ms: int
) -> list[Drift]:
    """Every record Redis must hold is there, as PostgreSQL + the unapplied events have it."""
    names = RESERVATION_FIELDS if kind == "reservation" else ORDER_FIELDS
    found = []
    wanted = {key: rec for key, rec in expected.items() if in_window(rec, kind, cutoff_ms)}
    held = {key: rec for key, rec in redis_records.items() if in_window(rec, kind, cutoff_ms)}
    for key in sorted(set(wanted) | set(held)):
        want, have = wanted.get(key), held.get(key)
        if want is not None and have is not None:
            diff = [n for n in names if _none(want.get(n)) != _none(have.get(n))]
            if (
                kind == "reservation"
                and want["status"] == OPEN
                and want.get("pay_until") != have.get("pay_until")
            ):
                diff.append("pay_until")
            if not diff:
                continue
            expected_text = f"{key} " + " ".join(f"{n}={_none(want.get(n))}" for n in diff)
            actual_text = " ".join(f"{n}={_none(have.get(n))}" for n in diff)
        elif want is not None:
            expected_text, actual_text = f"{key} {_describe(want, ('status',))}", "missing in Redis"
        else:
            assert have is not None
            expected_text = f"{key} unknown to PostgreSQL and the unapplied events"
            actual_text = _describe(have, ("status",))
        sku = str((want or have or {}).get("sku"))
        found.append(Drift(sku, f"{kind}_matches", "log", expected_text, actual_text))
    return found


def check(snap: Snapshot) -> Report:
    r, pg = snap.redis, snap.postgres
    unapplied = r.unapplied_events()
    target = expected_redis(snap)
    deltas: dict[str, Counters] = defaultdict(Counters)
    event_counts: dict[str, int] = defaultdict(int)
    room_deltas: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for e in unapplied:
        change = effect(e)
        deltas[e.sku].add(change)
        event_counts[e.sku] += 1
        if change.admitted or change.sent_away:
            admitted, sent_away = room_deltas[e.sku]
            room_deltas[e.sku] = (admitted + change.admitted, sent_away + change.sent_away)

    drifts: list[Drift] = []
    open_units: dict[str, int] = defaultdict(int)
    open_holds: dict[str, int] = defaultdict(int)
    for record in r.reservations.values():
        if record["status"] == OPEN:
            open_units[record["sku"]] += int(record["quantity"])
            open_holds[record["sku"]] += 1
    views: list[SkuView] = []
    for sku in sorted(set(r.sales) | set(pg.sales) | set(target.sales)):
        redis_c, pg_c = counters(r.sales.get(sku)), counters(pg.sales.get(sku))
        want = target.sales.get(sku)
        found = _store_checks(sku, "redis", redis_c, open_units.get(sku, 0), None)
        pg_open, pg_sold = pg.sums.get(sku, (0, 0))
        found += _store_checks(sku, "postgres", pg_c, pg_open, pg_sold)
        if fmt(counters(want)) != fmt(redis_c):
            found.append(
                Drift(sku, "postgres_plus_unapplied_equals_redis", "log", fmt(counters(want)), fmt(redis_c))
            )
        have = r.sales.get(sku)
        if want is not None and have is not None:
            diff = [n for n in SETTINGS if want.get(n) != have.get(n)]
            if diff:
                expected_text = " ".join(f"{n}={want.get(n)}" for n in diff)
                actual_text = " ".join(f"{n}={have.get(n)}" for n in diff)
                found.append(Drift(sku, "settings_match", "log", expected_text, actual_text))
        drifts += found
        views.append(
            SkuView(
                sku=sku,
                redis=redis_c,
                postgres=pg_c,
                unapplied=deltas.get(sku, Counters()),
                unapplied_events=event_counts.get(sku, 0),
                holds=open_holds.get(sku, 0),
                drift=len(found),
                node=r.node_of(sku),
                room_redis=r.rooms.get(sku),
                room_postgres=pg.rooms.get(sku),
                room_unapplied=room_deltas.get(sku, (0, 0)),
                line=len(r.lines[sku].line) if sku in r.lines else 0,
                admissions=len(r.lines[sku].admissions) if sku in r.lines else 0,
            )
        )
    later: list[Drift] = []
    later += _limit_checks("redis", r.users, r.sales)
    later += _limit_checks("postgres", pg.users, pg.sales)
    for key in sorted(set(r.users) | set(target.users)):
        have_counts, want_counts = r.users.get(key, (0, 0)), target.users.get(key, (0, 0))
        if have_counts != want_counts:
            sku, user = key
            later.append(
                Drift(
                    sku,
                    "user_counts_match",
                    "log",
                    f"user {user} held={want_counts[0]} purchased={want_counts[1]}",
                    f"held={have_counts[0]} purchased={have_counts[1]}",
                )
            )
    later += _holds_checks(snap)
    later += _room_checks(snap, target.rooms)
    later += _line_checks(snap)
    later += _entity_checks("reservation", r.reservations, target.reservations, snap.cutoff_ms)
    later += _entity_checks("order", r.orders, target.orders, snap.cutoff_ms)
    by_sku = {view.sku: view for view in views}
    for drift in later:
        if drift.sku in by_sku:
            by_sku[drift.sku].drift += 1
    return Report(
        views,
        drifts + later,
        dict(pg.offsets),
        len(unapplied),
        checked_reservations=len(r.reservations),
        checked_orders=len(r.orders),
        nodes=_nodes(r.nodes),
        unreadable=list(r.unreadable),
    )


def _nodes(owner: dict[int, str]) -> dict[str, tuple[int, ...]]:
    by_node: dict[str, list[int]] = {}
    for partition, node in sorted(owner.items()):
        by_node.setdefault(node, []).append(partition)
    return {node: tuple(partitions) for node, partitions in by_node.items()}
