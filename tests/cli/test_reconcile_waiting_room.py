"""`flashsale reconcile` and its repairs cover waiting rooms, against real Redis and PostgreSQL: a room's
settings and counts (admitted, sent away) are PostgreSQL's plus the unapplied events, the line agrees with the
admissions in Redis, drift is found and repaired either way, and a Redis lost whole gets its rooms back on.

The tests marked ``cluster`` run on one Redis and on a 3-master Redis Cluster ([single], [cluster])."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.models import WaitingRoom

from flashsale.cli import main

Drain = Callable[[Engine, str], int]

WORKER = "admitter-1"
# Partitions 13 and 0: on the test cluster, on two different masters.
ROOMY, SOLD_OUT = "SKU-TV-55", "SKU-MUG-RED"
ROOM = WaitingRoom(admit_per_s=1000, stock_factor=0, admission_ttl_ms=60_000)


@pytest.fixture
def env(redis_url: str, database_url: str, on_cluster: bool) -> dict[str, str]:
    return {
        "FLASHSALE_REDIS_URL": redis_url,
        "FLASHSALE_REDIS_CLUSTER": "1" if on_cluster else "0",
        "FLASHSALE_DATABASE_URL": database_url,
    }


def reconcile(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["reconcile", *args], env=env, catch_exceptions=False)


def report(env: dict[str, str]) -> dict[str, Any]:
    result = reconcile(env, "--json")
    document: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if document["ok"] else 1)
    return document


def checks_for(document: dict[str, Any], sku: str) -> set[tuple[str, str]]:
    return {(d["check"], d["where"]) for d in document["drift"] if d["sku"] == sku}


def room_of(document: dict[str, Any], sku: str) -> dict[str, Any]:
    room: dict[str, Any] = next(s for s in document["skus"] if s["sku"] == sku)["waiting_room"]
    return room


def open_room(engine: Engine, sku: str, total: int) -> None:
    now = int(engine.redis.time()[0]) * 1000
    engine.load_sale(SaleSettings(sku=sku, name=sku, total=total, per_user_limit=1, starts_at=now - 60_000))
    engine.set_waiting_room(sku, ROOM)
    engine.redis.set(engine.keys.for_sku(sku).admitter_lease(sku), WORKER)


@pytest.fixture
def rooms(engine: Engine, database_url: str, drain: Drain) -> Engine:
    """Two sales with a waiting room: one admitting (someone reserved, others wait), one sold out with its
    line sent away; drained, then an admission and a settings change left unapplied."""
    open_room(engine, ROOMY, total=10)
    for n in range(6):
        engine.join_queue(ROOMY, f"shopper{n}")
    assert engine.admit(ROOMY, WORKER, batch=3).admitted == 3
    engine.reserve(ROOMY, "shopper0")

    open_room(engine, SOLD_OUT, total=1)
    for n in range(3):
        engine.join_queue(SOLD_OUT, f"buyer{n}")
    assert engine.admit(SOLD_OUT, WORKER, batch=1).admitted == 1
    hold = engine.reserve(SOLD_OUT, "buyer0")
    engine.confirm(engine.begin_checkout(hold.id, "buyer0", "card").id, "buyer0")
    assert engine.admit(SOLD_OUT, WORKER).sent_away == 2  # sold out for good: the line is sent away

    assert drain(engine, database_url) > 0
    # Not drained: the worker has not seen these yet.
    assert engine.admit(ROOMY, WORKER, batch=1).admitted == 1
    engine.set_waiting_room(ROOMY, WaitingRoom(admit_per_s=500, stock_factor=2, admission_ttl_ms=90_000))
    return engine


def pg_rooms(database_url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT sku_id, is_on, admit_per_second, stock_factor, admission_ttl_ms, admitted, sent_away "
            "FROM waiting_rooms"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


@pytest.mark.cluster
def test_waiting_rooms_reconcile_with_zero_drift_postgresql_lagging_by_the_unapplied_events(
    rooms: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    result = reconcile(env)
    assert result.exit_code == 0, result.output
    assert "waiting room" in result.output
    document = report(env)
    assert document["drift"] == []
    roomy = room_of(document, ROOMY)
    assert roomy["redis"] == {
        "on": True,
        "opens_at": 0,
        "admit_per_s": 500,
        "stock_factor": 2,
        "admission_ttl_ms": 90_000,
        "admitted": 4,
        "sent_away": 0,
    }
    assert roomy["postgres"]["admit_per_s"] == 1000  # the settings change is not applied yet
    assert roomy["postgres"]["admitted"] == 3
    assert roomy["unapplied_counts"] == {"admitted": 1, "sent_away": 0}
    assert (roomy["line"], roomy["admissions"]) == (2, 4)
    sold_out = room_of(document, SOLD_OUT)
    assert sold_out["redis"]["sent_away"] == sold_out["postgres"]["sent_away"] == 2
    assert sold_out["line"] == 0
    drain(rooms, database_url)
    assert report(env)["ok"] is True
    assert pg_rooms(database_url)[ROOMY] == (True, 500, 2, 90_000, 4, 0)


def test_an_admission_nobody_counted_is_found(rooms: Engine, env: dict[str, str]) -> None:
    p = rooms.keys.for_sku(ROOMY)
    rooms.redis.zadd(p.admitted(ROOMY), {"gatecrasher": 10**13})  # let in by hand, past the admitter
    document = report(env)
    assert checks_for(document, ROOMY) == {("admissions_counted", "redis")}
