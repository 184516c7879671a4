"""`flashsale reconcile` against real Redis and PostgreSQL: clean data passes, each kind of drift is found
and reported with a non-zero exit, and each repair direction brings it back to zero drift.

The tests marked ``cluster`` run on one Redis and on a 3-master Redis Cluster (``[single]``, ``[cluster]``),
where each partition is read on its own master, the report names each SKU's node, and a master that is
down is named with its partitions."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.keys import Keyspace, bought_field
from flashsale.engine.nodes import node_clients, partition_nodes

from flashsale import reconcile as rc
from flashsale.cli import main
from flashsale.reconcile.target import expected_redis

Drain = Callable[[Engine, str], int]

# Partitions 13, 14 and 0: on the test cluster (the launcher's 3 masters) each SKU has a master of its own
# (test_clean_data_reconciles_with_zero_drift_and_exit_0 checks it).
SKUS = ("SKU-TV-55", "SKU-PHONE-1", "SKU-MUG-RED")


@pytest.fixture
def busy_sale(engine: Engine, database_url: str, drain: Drain) -> Engine:
    """Three SKUs after a mixed burst, drained into PostgreSQL, then a few more changes left unapplied."""
    now = int(engine.redis.time()[0]) * 1000
    for i, sku in enumerate(SKUS):
        engine.load_sale(
            SaleSettings(
                sku=sku,
                name=f"Item {sku}",
                price_cents=10_000 + i,
                flash_price_cents=7_500 + i,
                total=20,
                per_user_limit=2,
                starts_at=now - 60_000,
                reservation_ttl_ms=120_000,
            )
        )
    for n in range(12):
        sku, user = SKUS[n % 3], f"user{n}"
        hold = engine.reserve(sku, user, quantity=1 + n % 2)
        if n % 4 == 0:
            order = engine.begin_checkout(hold.id, user, "card")
            engine.confirm(order.id, user, transaction_id=f"tx{n}")
            if n == 8:
                engine.fulfil_order(order.id)
        elif n % 4 == 1:
            engine.release(hold.id, user)
        elif n % 4 == 2:
            order = engine.begin_checkout(hold.id, user, "card")
            engine.fail_checkout(order.id, user, "PAYMENT_DECLINED")
        # n % 4 == 3: the hold stays open
    cancelled = engine.begin_checkout(engine.reserve(SKUS[0], "canceller").id, "canceller", "card")
    engine.confirm(cancelled.id, "canceller")
    engine.cancel_order(cancelled.id, "canceller")
    assert drain(engine, database_url) > 30
    # Not drained: the worker has not seen these yet.
    hold = engine.reserve(SKUS[1], "late1")
    engine.confirm(engine.begin_checkout(hold.id, "late1", "card").id, "late1")
    engine.reserve(SKUS[2], "late2", quantity=2)
    engine.restock(SKUS[0], 5)
    return engine


def reconcile(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["reconcile", *args], env=env, input=input, catch_exceptions=False)


def report(env: dict[str, str]) -> dict[str, Any]:
    result = reconcile(env, "--json")
    document: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if document["ok"] else 1)
    return document


def counters(engine: Engine) -> dict[str, tuple[int, int, int, int]]:
    return {s.sku: (s.total, s.available, s.reserved, s.sold) for s in engine.list_sales()}


def pg_counters(database_url: str) -> dict[str, tuple[int, int, int, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT sku_id, total_count, available_count, reserved_count, sold_count FROM inventory"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def checks_for(document: dict[str, Any], sku: str) -> set[tuple[str, str]]:
    return {(d["check"], d["where"]) for d in document["drift"] if d["sku"] == sku}


def assert_every_key_on_its_partitions_node(engine: Engine) -> None:
    """Each node holds only keys of the partitions it serves (the rebuild went through the cluster's
    routing), and the rebuilt sales are there."""
    tags = {p.tag: p.index for p in engine.keys.all()}
    served = {node.name: set(node.partitions) for node in partition_nodes(engine.redis, engine.keys)}
    seen = set()
    for name, client in node_clients(engine.redis).items():
        for key in client.scan_iter(match=f"{engine.config.prefix}:*", count=1000):
            tag = next((t for t in tags if str(key).startswith(t)), None)
            if tag is not None:
                assert tags[tag] in served[name], f"{key} on {name}, which serves {sorted(served[name])}"
                seen.add(tags[tag])
    assert {engine.keys.for_sku(sku).index for sku in SKUS} <= seen


@pytest.mark.cluster
def test_clean_data_reconciles_with_zero_drift_and_exit_0(
    busy_sale: Engine, env: dict[str, str], on_cluster: bool
) -> None:
    result = reconcile(env)
    assert result.exit_code == 0, result.output
    assert "No drift" in result.output
    document = report(env)
    assert document["ok"] is True
    assert document["drift"] == []
    assert document["unapplied_events"] == 5  # reserve, checkout, confirm, reserve, restock
    live = counters(busy_sale)
    by_sku = {s["sku"]: s for s in document["skus"]}
    assert set(by_sku) == set(SKUS)
    for sku, (total, available, reserved, sold) in live.items():
        assert by_sku[sku]["redis"] == {
            "total": total,
            "available": available,
            "reserved": reserved,
            "sold": sold,
        }
    # PostgreSQL lags by exactly the unapplied events: SKU-MUG-RED's late hold of 2 is not there yet.
    mug = by_sku["SKU-MUG-RED"]
    assert mug["unapplied_deltas"] == {"total": 0, "available": -2, "reserved": 2, "sold": 0}
    assert by_sku["SKU-MUG-RED"]["postgres"]["reserved"] == live["SKU-MUG-RED"][2] - 2
    # Each SKU names the Redis node serving its partition (on a cluster: its master), and so does the
    # summary per node.
    nodes = partition_nodes(busy_sale.redis, busy_sale.keys)
    owner = {p: node.name for node in nodes for p in node.partitions}
    for sku in SKUS:
        assert by_sku[sku]["node"] == owner[busy_sale.keys.for_sku(sku).index]
    assert [(n["node"], n["partitions"], n["read"]) for n in document["nodes"]] == [
        (node.name, list(node.partitions), True) for node in nodes
    ]
    assert document["complete"] is True
    assert document["unreadable_nodes"] == []
    assert sum(n["skus"] for n in document["nodes"]) == len(SKUS)
    assert len({by_sku[sku]["node"] for sku in SKUS}) == (3 if on_cluster else 1)  # every master has one
    if on_cluster:
        assert "node" in result.output
        assert all(by_sku[sku]["node"] in result.output for sku in SKUS)


@pytest.mark.cluster
def test_a_sale_on_every_node_reconciles_with_zero_drift_while_shoppers_buy_and_the_streams_drain(
    engine: Engine, env: dict[str, str], database_url: str, drain: Drain, on_cluster: bool
) -> None:
    from flashsale import reconcile as rc

    skus = [f"SKU-LIVE-{n}" for n in range(6)]
    owners = {node.name for node in partition_nodes(engine.redis, engine.keys)}
    nodes_of = {
        next(
            n.name
            for n in partition_nodes(engine.redis, engine.keys)
            if engine.keys.for_sku(s).index in n.partitions
        )
        for s in skus
    }
    assert nodes_of == owners  # on a cluster: SKUs on every master
    now = int(engine.redis.time()[0]) * 1000
    for sku in skus:
        engine.load_sale(SaleSettings(sku=sku, name=sku, total=40, per_user_limit=2, starts_at=now - 1_000))
    stop = threading.Event()
    failures: list[BaseException] = []

    def shopper(k: int) -> None:
        try:
            for n in range(24):
                sku, user = skus[(k + n) % len(skus)], f"shopper{k}-{n % 8}"
                try:
                    hold = engine.reserve(sku, user)
                except FlashSaleError:
                    continue  # at the per-user limit: a real refusal
                if n % 3 == 0:
                    engine.confirm(engine.begin_checkout(hold.id, user, "card").id, user)
                elif n % 3 == 1:
                    engine.release(hold.id, user)
        except BaseException as error:  # surfaced by the test's thread
            failures.append(error)

    def worker() -> None:
        while not stop.is_set():
            drain(engine, database_url)
            time.sleep(0.01)

    threads = [threading.Thread(target=shopper, args=(k,)) for k in range(3)]
    drainer = threading.Thread(target=worker)
    for thread in [*threads, drainer]:
        thread.start()
    try:
        # While shoppers buy and events are applied: each partition is cut at PostgreSQL's offset.
        during = [rc.reconcile(engine, database_url) for _ in range(2)]
    finally:
        for thread in threads:
            thread.join()
        stop.set()
        drainer.join()
    assert failures == []
    for taken in during:
        assert taken.ok, taken.drifts[:5]
    drain(engine, database_url)
    document = report(env)
    assert document["ok"] is True, document["drift"][:5]
    assert document["unapplied_events"] == 0
    assert {view["node"] for view in document["skus"]} == owners
    assert len(document["nodes"]) == (3 if on_cluster else 1)
    assert sum(view["redis"]["sold"] for view in document["skus"]) > 0


@pytest.mark.cluster
def test_the_target_changes_copies_of_postgresqls_records_never_the_records_read(
    busy_sale: Engine, database_url: str, drain: Drain
) -> None:
    """What Redis must hold shares PostgreSQL's records (millions of them in a big sale) and replaces the
    ones an unapplied event changes: the state read from PostgreSQL stays as read, which the checks and
    the PostgreSQL repair compare against."""
    hold = busy_sale.reserve(SKUS[0], "shared")
    drain(busy_sale, database_url)
    busy_sale.release(hold.id, "shared")  # unapplied: PostgreSQL still has the hold open
    snap = rc.snapshot(busy_sale, database_url)
    as_read = copy.deepcopy(snap.postgres.reservations)
    target = expected_redis(snap)
    assert snap.postgres.reservations == as_read
    assert as_read[hold.id]["status"] == "RESERVED"
    assert target.reservations[hold.id]["status"] == "CANCELLED"
    assert snap.redis.reservations[hold.id]["status"] == "CANCELLED"
    unchanged = next(rid for rid, r in as_read.items() if rid != hold.id and r["status"] == "RESERVED")
    assert target.reservations[unchanged] is snap.postgres.reservations[unchanged]
    checked = rc.check(snap)
    assert checked.ok, checked.drifts[:5]
    assert checked.unapplied_events == 1


def test_drift_in_redis_is_found_and_rebuilt_from_postgres(busy_sale: Engine, env: dict[str, str]) -> None:
    before = counters(busy_sale)
    sku_key = busy_sale.keys.for_sku("SKU-TV-55").sku("SKU-TV-55")
    busy_sale.redis.hincrby(sku_key, "available", 3)  # units out of nowhere
    busy_sale.redis.hset(sku_key, "due_first", 9_999_999_999_999)  # sold-out answers would miss lapsed holds
    mug = busy_sale.keys.for_sku("SKU-MUG-RED").sku("SKU-MUG-RED")
    busy_sale.redis.hset(mug, bought_field("user2"), 5)  # past the per-user limit of 2
    phone = busy_sale.keys.for_sku("SKU-PHONE-1")
    dangling = f"rsv_{phone.index}_dangling"
    busy_sale.redis.zadd(phone.holds("SKU-PHONE-1"), {dangling: 1})  # a hold with no record

    result = reconcile(env)
    assert result.exit_code == 1
    assert "drift finding" in result.output
    document = report(env)
    assert {
        ("counts_add_up", "redis"),
        ("postgres_plus_unapplied_equals_redis", "log"),
        ("due_first_bound", "redis"),
    } <= checks_for(document, "SKU-TV-55")
    assert {("per_user_limit", "redis"), ("user_counts_match", "log")} <= checks_for(document, "SKU-MUG-RED")
    assert checks_for(document, "SKU-PHONE-1") == {("open_hold_has_reservation", "redis")}

    repaired = reconcile(env, "--repair", "redis-from-postgres", "--yes")
    assert repaired.exit_code == 0, repaired.output
    assert "SKU-TV-55: counters total=25 available=" in repaired.output
    assert counters(busy_sale) == before
    assert busy_sale.redis.hget(sku_key, "due_first") is None  # the SKU hash rewritten without it
    assert busy_sale.user_counts("SKU-MUG-RED", "user2").purchased == 0
    assert busy_sale.redis.zscore(phone.holds("SKU-PHONE-1"), dangling) is None
    assert not busy_sale.redis.exists(phone.reservation(dangling))
    assert report(env)["ok"] is True


@pytest.mark.cluster
def test_redis_lost_entirely_is_rebuilt_and_keeps_serving(
    busy_sale: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    drain(busy_sale, database_url)
    before = counters(busy_sale)
    open_hold = busy_sale.reserve("SKU-PHONE-1", "survivor")
    drain(busy_sale, database_url)
    busy_sale.redis.flushall()  # on a cluster: every master

    assert reconcile(env).exit_code == 1
    assert reconcile(env, "--repair", "redis-from-postgres", "--yes").exit_code == 0
    assert_every_key_on_its_partitions_node(busy_sale)
    after = counters(busy_sale)
    total, available, reserved, sold = before["SKU-PHONE-1"]
    assert after["SKU-PHONE-1"] == (total, available - 1, reserved + 1, sold)
    assert {k: v for k, v in after.items() if k != "SKU-PHONE-1"} == {
        k: v for k, v in before.items() if k != "SKU-PHONE-1"
    }
    # Every stream's next id is past what PostgreSQL applied, or the worker would skip new events.
    with psycopg.connect(database_url) as conn:
        offsets = dict(conn.execute("SELECT partition, applied_id FROM stream_offsets").fetchall())
    assert any(applied != "0-0" for applied in offsets.values())
    for partition, applied in offsets.items():
        if applied != "0-0":
            info = busy_sale.redis.xinfo_stream(busy_sale.keys.partition(partition).events())
            assert info["last-generated-id"] == applied
            assert info["length"] == 0
    # The rebuilt hold is a real one: its owner can pay for it, and the per-user limit still holds.
    order = busy_sale.begin_checkout(open_hold.id, "survivor", "card")
    assert busy_sale.confirm(order.id, "survivor").status == "CONFIRMED"
    assert busy_sale.user_counts("SKU-PHONE-1", "survivor").purchased == 1
    drain(busy_sale, database_url)
    assert report(env)["ok"] is True


@pytest.mark.cluster
def test_drift_in_postgres_is_found_and_redriven_from_the_stream(
    busy_sale: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    before = pg_counters(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE inventory SET sold_count = sold_count + 1, available_count = available_count - 1 "
            "WHERE sku_id = 'SKU-PHONE-1'"
        )
        conn.execute(
            "UPDATE reservations SET status = 'EXPIRED', ended_at = now() WHERE status = 'RESERVED' "
            "AND sku_id = 'SKU-TV-55'"
        )

    result = reconcile(env)
    assert result.exit_code == 1
    document = report(env)
    assert {("orders_match_sold", "postgres"), ("postgres_plus_unapplied_equals_redis", "log")} <= checks_for(
        document, "SKU-PHONE-1"
    )
    assert ("open_holds_match_reserved", "postgres") in checks_for(document, "SKU-TV-55")
    assert ("reservation_matches", "log") in checks_for(document, "SKU-TV-55")

    repaired = reconcile(env, "--repair", "postgres-from-stream", "--yes")
    assert repaired.exit_code == 0, repaired.output
    assert pg_counters(database_url) == before
    assert report(env)["ok"] is True
    # PostgreSQL is again the applied prefix: once the worker applies the rest it equals Redis.
    drain(busy_sale, database_url)
    assert pg_counters(database_url) == counters(busy_sale)


@pytest.mark.cluster
@pytest.mark.parametrize("direction", ["redis-from-postgres", "postgres-from-stream"])
def test_a_lost_stream_entry_is_found_and_either_repair_settles_it(
    busy_sale: Engine, env: dict[str, str], database_url: str, drain: Drain, direction: str
) -> None:
    hold = busy_sale.reserve("SKU-TV-55", "ghost")
    partition = Keyspace(busy_sale.config.partitions, busy_sale.config.prefix).for_sku("SKU-TV-55")
    entries = busy_sale.redis.xrange(partition.events(), "-", "+")
    mark = hold.id.split("_", 2)[2]  # a reserved event carries the id without "rsv_<partition>_"
    lost = [stream_id for stream_id, fields in entries if mark in fields["e"]]
    assert len(lost) == 1
    busy_sale.redis.xdel(partition.events(), lost[0])

    document = report(env)
    assert document["ok"] is False
    assert {("postgres_plus_unapplied_equals_redis", "log"), ("reservation_matches", "log")} <= checks_for(
        document, "SKU-TV-55"
    )

    assert reconcile(env, "--repair", direction, "--yes").exit_code == 0
    assert report(env)["ok"] is True
    drain(busy_sale, database_url)
    assert report(env)["ok"] is True
    assert pg_counters(database_url) == counters(busy_sale)
    held = busy_sale.user_counts("SKU-TV-55", "ghost").held
    # Rebuilding Redis forgets the hold the log lost; re-driving PostgreSQL keeps it on both sides.
    assert held == (0 if direction == "redis-from-postgres" else 1)


def test_a_repair_shows_its_plan_and_changes_nothing_when_declined(
    busy_sale: Engine, env: dict[str, str], database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE inventory SET reserved_count = reserved_count + 2, available_count = available_count - 2 "
            "WHERE sku_id = 'SKU-MUG-RED'"
        )
    drifted = pg_counters(database_url)
    result = reconcile(env, "--repair", "postgres-from-stream", input="n\n")
    assert result.exit_code == 1
    assert "SKU-MUG-RED: inventory total=20" in result.output
    assert "Apply these changes to PostgreSQL?" in result.output
    assert "nothing was changed" in result.output
    assert pg_counters(database_url) == drifted


def test_reconcile_without_configuration_says_what_is_missing() -> None:
    result = CliRunner().invoke(
        main, ["reconcile"], env={"FLASHSALE_REDIS_URL": "", "FLASHSALE_DATABASE_URL": ""}
    )
    assert result.exit_code == 2
    assert "FLASHSALE_REDIS_URL is not set" in result.output


@pytest.mark.cluster
def test_a_repair_refuses_while_a_worker_holds_leases(busy_sale: Engine, env: dict[str, str]) -> None:

    busy_sale.redis.set(busy_sale.keys.partition(3).writeback_lease(), "worker-on-host-a", px=60_000)
    sold = busy_sale.get_sale("SKU-MUG-RED").sold
    busy_sale.redis.hincrby(busy_sale.keys.for_sku("SKU-MUG-RED").sku("SKU-MUG-RED"), "sold", 1)
    result = reconcile(env, "--repair", "redis-from-postgres", "--yes")
    assert result.exit_code == 1
    assert "worker(s) worker-on-host-a hold partition leases: stop them" in result.output
    # The drift is still there: nothing was repaired.
    assert busy_sale.get_sale("SKU-MUG-RED").sold == sold + 1
    assert report(env)["ok"] is False


def test_a_large_sale_reconciles_with_progress_reported(
    engine: Engine, database_url: str, drain: Drain
) -> None:
    from flashsale import reconcile as rc

    now = int(engine.redis.time()[0]) * 1000
    engine.load_sale(SaleSettings(sku="SKU-BIG", name="Big", total=5_000, starts_at=now - 1_000))
    pipe = engine.redis.pipeline(transaction=False)
    calls = [engine.ops.reserve("SKU-BIG", f"shopper{n}", 1, None) for n in range(2_500)]
    for call in calls:
        pipe.evalsha(engine.scripts[call.script].sha, len(call.keys), *call.keys, *call.args)
    assert all(isinstance(reply, str) and reply.startswith("rsv_") for reply in pipe.execute())
    drain(engine, database_url)

    seen: dict[str, tuple[int, int]] = {}
    report = rc.reconcile(
        engine, database_url, lambda phase, done, total: seen.__setitem__(phase, (done, total))
    )
    assert report.ok, report.drifts[:5]
    assert seen["partitions"] == (engine.config.partitions, engine.config.partitions)
    assert report.checked_reservations == 2_500
    big = next(view for view in report.skus if view.sku == "SKU-BIG")
    assert (big.holds, big.redis.reserved if big.redis else None) == (2_500, 2_500)
