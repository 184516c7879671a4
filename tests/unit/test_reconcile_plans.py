"""Reconcile's checks and repair plans on snapshots made in memory: no server, answers in milliseconds.

The real-server tests (tests/cli/test_reconcile.py, tests/writeback/test_redis_restore.py) show the same
against live stores; these pin the rules down one by one."""

from __future__ import annotations

import copy
import json
from typing import Any

from flashsale.engine.events import Event, parse_entry

from flashsale.reconcile import check, plan_postgres_from_stream, plan_redis_from_postgres
from flashsale.reconcile.state import PostgresState, RedisState, Snapshot

NOW = 1_796_000_000_000
DAY = 24 * 3600 * 1000


def sale(**counters: int) -> dict[str, Any]:
    values = {"total": 10, "available": 9, "reserved": 1, "sold": 0, **counters}
    return {
        "sku": "MUG",
        "name": "Mug",
        "price_cents": 1200,
        "flash_price_cents": 500,
        "per_user_limit": 2,
        "starts_at": 0,
        "ends_at": 0,
        "reservation_ttl_ms": 120_000,
        "paused": False,
        "created_at": NOW - DAY,
        "updated_at": NOW - DAY,
        **values,
    }


def hold(
    rid: str, status: str = "RESERVED", ended_at: int | None = None, user: str = "alice"
) -> dict[str, Any]:
    return {
        "id": rid,
        "sku": "MUG",
        "user": user,
        "quantity": 1,
        "status": status,
        "created_at": NOW - DAY,
        "expires_at": NOW + 60_000,
        "order_id": None,
        "pay_until": None,
        "confirmed_at": None,
        "ended_at": ended_at,
    }


def consistent() -> Snapshot:
    """One SKU with an open hold of alice's and a hold bob released an hour ago, in both stores."""
    open_hold, released = hold("rsv_3_open"), hold("rsv_3_gone", "CANCELLED", NOW - 3600_000, "bob")
    redis = RedisState(
        sales={"MUG": sale()},
        users={("MUG", "alice"): (1, 0)},
        reservations={"rsv_3_open": open_hold, "rsv_3_gone": released},
        holds={"MUG": {"rsv_3_open": NOW + 60_000}},
        unapplied={3: []},
        now_ms=NOW,
    )
    pg = PostgresState(
        sales={"MUG": sale()},
        users={("MUG", "alice"): (1, 0)},
        reservations=copy.deepcopy(redis.reservations),
        offsets={3: f"{NOW - 10}-0"},
        sums={"MUG": (1, 0)},
    )
    return Snapshot(redis, pg)


def unapplied(*body: Any, at: int = NOW) -> Event:
    return parse_entry(3, f"{at}-0", {"e": json.dumps(list(body))})


def checks(snap: Snapshot) -> set[tuple[str, str]]:
    return {(d.check, d.where) for d in check(snap).drifts}


def test_two_stores_that_agree_have_no_drift() -> None:
    assert check(consistent()).drifts == []


def test_events_not_yet_applied_are_carried_forward_before_comparing() -> None:
    snap = consistent()
    snap.redis.unapplied[3] = [unapplied("reserved", "MUG", NOW, "rsv_3_new", "carol", 1, 60_000)]
    snap.redis.sales["MUG"].update(available=8, reserved=2)
    snap.redis.users[("MUG", "carol")] = (1, 0)
    snap.redis.reservations["rsv_3_new"] = {**hold("rsv_3_new", user="carol"), "created_at": NOW}
    snap.redis.holds["MUG"]["rsv_3_new"] = NOW + 60_000
    assert check(snap).drifts == []


def test_an_ended_reservation_redis_lost_is_drift() -> None:
    """Issue 12, defect 5: reconcile did not look at ended reservations, so a Redis restored from an old
    copy that lost them said "no drift"."""
    snap = consistent()
    del snap.redis.reservations["rsv_3_gone"]
    assert checks(snap) == {("reservation_matches", "log")}


def test_an_ended_reservation_past_its_retention_is_neither_stores_concern() -> None:
    snap = consistent()
    old = snap.postgres.reservations["rsv_3_gone"]
    old["ended_at"] = NOW - 8 * DAY  # Redis's copy expired a day ago
    del snap.redis.reservations["rsv_3_gone"]
    assert check(snap).drifts == []


def test_a_hold_redis_reopened_after_postgresql_closed_it_is_drift_and_the_redis_plan_closes_it() -> None:
    snap = consistent()
    snap.postgres.reservations["rsv_3_open"].update(
        status="CONFIRMED", ended_at=NOW - 5, confirmed_at=NOW - 5
    )
    snap.postgres.sales["MUG"].update(reserved=0, sold=1)
    snap.postgres.users[("MUG", "alice")] = (0, 1)
    snap.postgres.sums["MUG"] = (0, 1)
    assert {("reservation_matches", "log"), ("postgres_plus_unapplied_equals_redis", "log")} <= checks(snap)
    plan = plan_redis_from_postgres(snap)
    assert plan.changed_reservations == ["rsv_3_open"]
    assert plan.target.reservations["rsv_3_open"]["status"] == "CONFIRMED"
    assert plan.target.users[("MUG", "alice")] == (0, 1)


def test_a_hold_outside_its_skus_holds_set_is_drift_in_redis() -> None:
    snap = consistent()
    snap.redis.holds["MUG"] = {}
    assert checks(snap) == {("open_hold_listed", "redis")}
    snap.redis.holds["MUG"] = {"rsv_3_open": NOW}  # listed at the wrong deadline
    assert checks(snap) == {("hold_at_its_deadline", "redis")}


def test_a_hold_in_its_skus_holds_list_at_or_before_its_deadline_is_indexed() -> None:
    """Reserve appends a hold to the SKU's holds list (lua/includes/holds.lua); entries of holds that
    ended stay until the list's head reaches them, and are no drift."""
    snap = consistent()
    snap.redis.holds["MUG"] = {}
    snap.redis.due[("MUG", 3)] = [("rsv_3_gone", NOW - DAY + 60_000), ("rsv_3_open", NOW + 60_000)]
    assert check(snap).drifts == []
    snap.redis.due[("MUG", 3)] = [("rsv_3_open", NOW + 30_000)]  # sooner: the head's reader indexes it again
    assert check(snap).drifts == []


def test_each_stock_buckets_holds_list_is_in_order_on_its_own() -> None:
    """A bucketed SKU has one holds list per bucket (its partition); their deadlines interleave."""
    snap = consistent()
    snap.redis.holds["MUG"] = {}
    snap.redis.due[("MUG", 3)] = [("rsv_3_open", NOW + 60_000)]
    snap.redis.due[("MUG", 4)] = [("rsv_4_gone", NOW - DAY + 60_000), ("rsv_4_older", NOW - DAY + 90_000)]
    assert check(snap).drifts == []


def test_a_hold_listed_after_its_deadline_or_a_list_out_of_order_is_drift() -> None:
    snap = consistent()
    snap.redis.holds["MUG"] = {}
    snap.redis.due[("MUG", 3)] = [("rsv_3_open", NOW + 90_000)]  # it would end 30 s late
    assert checks(snap) == {("hold_at_its_deadline", "redis")}
    snap.redis.due[("MUG", 3)] = [("rsv_3_gone", NOW + 120_000), ("rsv_3_open", NOW + 60_000)]
    assert checks(snap) == {("holds_list_in_order", "redis")}


def test_a_due_first_after_an_open_holds_deadline_is_drift() -> None:
    """reserve.lua's sold-out refusal trusts the SKU hash's due_first to come at or before every open
    hold's deadline (per partition: a stock bucket's hash bounds its own holds)."""
    snap = consistent()
    snap.redis.due_first[("MUG", 3)] = NOW + 60_000  # rsv_3_open's own deadline: a bound still
    assert check(snap).drifts == []
    snap.redis.due_first[("MUG", 4)] = NOW + 90_000  # another bucket's hash bounds other holds
    assert check(snap).drifts == []
    snap.redis.due_first[("MUG", 3)] = NOW + 90_000
    assert checks(snap) == {("due_first_bound", "redis")}


def test_counts_that_do_not_add_up_and_a_user_past_the_limit_are_drift() -> None:
    snap = consistent()
    snap.redis.sales["MUG"]["available"] = 12
    snap.redis.users[("MUG", "alice")] = (1, 5)
    found = checks(snap)
    assert {("counts_add_up", "redis"), ("per_user_limit", "redis"), ("user_counts_match", "log")} <= found


def test_the_postgres_plan_leaves_the_rows_the_unapplied_events_will_write_to_the_worker() -> None:
    snap = consistent()
    snap.redis.unapplied[3] = [unapplied("released", "MUG", NOW, "rsv_3_open", "alice", 1, None)]
    snap.redis.reservations["rsv_3_open"].update(status="CANCELLED", ended_at=NOW)
    snap.redis.sales["MUG"].update(available=10, reserved=0)
    snap.redis.holds["MUG"] = {}
    del snap.redis.users[("MUG", "alice")]
    snap.postgres.sales["MUG"].update(available=8, reserved=2, total=10)  # drifted
    plan = plan_postgres_from_stream(snap)
    assert list(plan.inventory) == ["MUG"]
    _now, target = plan.inventory["MUG"]
    assert (target.available, target.reserved) == (9, 1)  # Redis minus the release not applied yet
    assert plan.reservations == []  # rsv_3_open is the worker's to write
