"""The write-behind worker on a Redis Cluster: each partition's stream drained from its own master into
PostgreSQL and Kafka, a killed worker taken over, and a master that is down holding back only its own
partitions (the other masters' reach PostgreSQL meanwhile, and `flashsale worker lag` says NODE DOWN).

Kept small: the session's 3-master cluster, or for the node that dies a cluster of this test's own."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from click.testing import CliRunner
from flashsale.engine import Engine
from flashsale.engine.nodes import partition_nodes
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, nodes_down, read_lag, spawn_worker, wait_drained
from writeback_checks import Shop, all_events, assert_kafka_holds_every_event, assert_postgres_equals_redis

from flashsale.cli import main
from flashsale.launcher import RedisCluster

# The tests below that take the session's servers run on its 3-master cluster only.
on_the_cluster = pytest.mark.parametrize("redis_kind", ["cluster"], indirect=True)


def _applied_in_postgres(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(sum(applied_events), 0) FROM stream_offsets").fetchone()
    return int(row[0]) if row else 0


def _holdings(engine: Engine, settings: Settings, *workers: str) -> dict[str, set[int]]:
    held = {}
    for name in workers:
        value = engine.redis.get(settings.keyspace().writeback_worker(name))
        held[name] = {int(p) for p in str(value).split(",") if p} if value else set()
    return held


def _busy_worker(name: str) -> WorkerOptions:
    """Small batches (a kill lands mid-batch), the whole log kept (to compare Kafka with every event)."""
    return WorkerOptions(worker_id=name, batch_size=40, sweep=False, trim=False)


@on_the_cluster
def test_the_worker_drains_every_master_into_postgres_and_kafka(
    engine: Engine, settings: Settings, shop: Shop
) -> None:
    assert settings.redis_cluster
    shop.open()
    with WorkerThread(settings, WorkerOptions(trim=False, sweep=False)) as worker:
        shop.burst(customers=300, threads=3)
        assert worker.wait_drained(timeout_s=60)
        assert worker.owned_partitions == frozenset(range(settings.partitions))
    events = all_events(engine)
    nodes = partition_nodes(engine.redis, engine.keys)
    served = {node.name for node in nodes if node.partitions}
    with_events = {node.name for node in nodes if {e.partition for e in events} & set(node.partitions)}
    assert len(served) == 3
    assert with_events == served, "the shop's events must come from every master"
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    assert_kafka_holds_every_event(settings, events, exactly_once=True)
    assert _applied_in_postgres(str(settings.database_url)) == len(events)


@on_the_cluster
def test_a_worker_killed_under_load_is_taken_over_and_nothing_is_lost(
    engine: Engine, settings: Settings, shop: Shop, stop_load: threading.Event, tmp_path: Path
) -> None:
    shop.open(total=5000)
    load = [shop.keep_busy(stop_load, seed=s) for s in (1, 2)]
    logs = {name: tmp_path / f"{name}.log" for name in ("alpha", "beta")}
    alpha = spawn_worker(settings, _busy_worker("alpha"), log_path=logs["alpha"])
    beta = spawn_worker(settings, _busy_worker("beta"), log_path=logs["beta"])
    try:
        deadline = time.monotonic() + 20
        while True:
            held = _holdings(engine, settings, "alpha", "beta")
            assert not held["alpha"] & held["beta"], f"a partition held by both: {held}"
            if len(held["alpha"]) == len(held["beta"]) == settings.partitions // 2:
                break
            assert time.monotonic() < deadline, f"the workers never split the partitions: {held}"
            time.sleep(0.05)
        # Killed while busy: its batches are reaching PostgreSQL.
        applied = _applied_in_postgres(str(settings.database_url))
        deadline = time.monotonic() + 15
        while _applied_in_postgres(str(settings.database_url)) == applied:
            assert time.monotonic() < deadline, "no batch reached PostgreSQL"
            time.sleep(0.02)
        time.sleep(0.3)
        alpha.send_signal(signal.SIGKILL)
        alpha.wait(10)
        deadline = time.monotonic() + 8
        while _holdings(engine, settings, "beta")["beta"] != set(range(settings.partitions)):
            assert time.monotonic() < deadline, "beta did not take over alpha's partitions within seconds"
            time.sleep(0.05)
        stop_load.set()
        for thread in load:
            thread.join(10)
        assert shop.operations > 100
        assert wait_drained(settings, timeout_s=60)
        beta.send_signal(signal.SIGTERM)
        assert beta.wait(15) == 0, "SIGTERM must stop the worker cleanly"
        # Every lease released at once on stop (not left to expire): another worker or a repair may start.
        leases = [engine.redis.get(p.writeback_lease()) for p in settings.keyspace().all()]
        assert leases == [None] * settings.partitions, leases
    finally:
        for process in (alpha, beta):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "event=worker_stopped worker=beta" in logs["beta"].read_text()
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    assert_kafka_holds_every_event(settings, all_events(engine), exactly_once=False)


# -- a master down ------------------------------------------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters without replicas, of this test's own (one of them is killed, and comes back from its
    append-only file: ``data_dir``). The launcher starts every node with cluster-require-full-coverage
    no: with Redis's default (yes) every master would refuse every key once the dead one is marked failed;
    with it off each master goes on serving its own slots, as it should here."""
    with RedisCluster(3, node_timeout_ms=1000, data_dir=tmp_path / "cluster") as cluster:
        for node in cluster.masters:
            client = node.client()
            try:
                assert client.config_get("cluster-require-full-coverage") == {
                    "cluster-require-full-coverage": "no"
                }
            finally:
                client.close()
        yield cluster


def test_a_master_down_holds_back_only_its_partitions_until_it_is_back_and_lag_says_node_down(
    own_cluster: RedisCluster, database_url: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    values = {f: getattr(settings, f) for f in settings.__struct_fields__}
    settings = Settings(**{**values, "redis_url": own_cluster.url, "redis_cluster": True})
    engine = Engine.from_url(own_cluster.url, settings.engine_config(), cluster=True)
    engine.load_scripts()
    try:
        nodes = partition_nodes(engine.redis, engine.keys)
        victim_port = own_cluster.masters[1].port  # not the startup node the clients were given
        victim = next(node for node in nodes if node.name.endswith(f":{victim_port}"))
        skus = [f"SKU-{i}" for i in range(24)]
        on_victim = [sku for sku in skus if engine.keys.for_sku(sku).index in victim.partitions]
        elsewhere = [sku for sku in skus if sku not in on_victim]
        assert on_victim
        assert elsewhere
        before = Shop(engine, skus)
        before.open(total=2000)
        with WorkerThread(settings, WorkerOptions(trim=False)) as worker:
            before.burst(customers=120, threads=3, seed=5)
            assert worker.wait_drained(timeout_s=60)

            # Events on the victim, then it dies (kill -9): the worker may have read the first of them (and
            # then writes them to PostgreSQL all the same), not the last ones, made right before the kill.
            late = {engine.reserve(on_victim[0], f"late-{i}").id for i in range(40)}
            before.reservations |= late
            own_cluster.kill(1)
            time.sleep(2.5)  # past node_timeout: the other masters mark it failed, and keep serving

            after = Shop(engine, elsewhere)
            after.burst(customers=90, threads=3, seed=6)
            assert len(after.reservations) > 50, "the other masters must keep serving"
            deadline = time.monotonic() + 30
            while True:
                lags = read_lag(engine.redis, engine.keys)
                live = [lag for lag in lags if lag.partition not in victim.partitions]
                if all(lag.pending == 0 for lag in live):
                    break
                assert time.monotonic() < deadline, f"the live masters' partitions did not drain: {live}"
                time.sleep(0.1)
            assert nodes_down(lags) == [victim.name]
            assert {lag.partition for lag in lags if lag.node_down} == set(victim.partitions)
            assert not wait_drained(settings, timeout_s=0.5), "a partition on a dead node is not drained"
            assert worker.worker.owned_partitions >= {lag.partition for lag in live}

            # PostgreSQL has every change of the live masters' SKUs (a change made after the kill too).
            with psycopg.connect(database_url) as conn:
                inventory = {
                    row[0]: row[1:]
                    for row in conn.execute(
                        "SELECT sku_id, available_count, reserved_count, sold_count FROM inventory"
                    )
                }
                stored = set(row[0] for row in conn.execute("SELECT reservation_id FROM reservations"))
            for sku in elsewhere:
                sale = engine.get_sale(sku)
                assert inventory[sku] == (sale.available, sale.reserved, sale.sold), sku
            assert after.reservations <= stored
            assert not late <= stored, "the dead master's last events wait for it"

            runner = CliRunner()
            shown = runner.invoke(main, ["worker", "lag", "--json"], env=settings.as_env())
            assert shown.exit_code == 0, shown.output
            document = msgspec.json.decode(shown.output)
            assert document["nodes_down"] == [victim.name]
            assert {row["partition"] for row in document["partitions"] if row["node_down"]} == set(
                victim.partitions
            )
            table = runner.invoke(main, ["worker", "lag"], env=settings.as_env())
            assert table.exit_code == 0, table.output
            assert f"NODE DOWN {victim.name}" in table.output
            assert table.output.count("NODE DOWN") == len(victim.partitions) + 1

            # Back from its append-only file: its partitions are taken again and drain, nothing lost.
            own_cluster.masters[1].start()
            own_cluster.wait_until_ready()
            deadline = time.monotonic() + 15
            while worker.owned_partitions != frozenset(range(settings.partitions)):
                assert time.monotonic() < deadline, f"not taken again: {worker.owned_partitions}"
                time.sleep(0.05)
            assert worker.wait_drained(timeout_s=30)
        everything = Shop(engine, skus)
        everything.reservations = before.reservations | after.reservations
        everything.orders = before.orders | after.orders
        assert_postgres_equals_redis(engine, database_url, everything)
        # Neither the death nor the return of the master failed a batch of another master's partition.
        failed = {r.getMessage() for r in caplog.records if "event=partition_failed" in r.getMessage()}
        assert failed
        assert all(any(f"partition={p} " in line for p in victim.partitions) for line in failed), failed
    finally:
        engine.close()


def _sync_inventory(database_url: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT sku_id, available_count, reserved_count, sold_count FROM inventory")
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_a_frozen_master_holds_back_only_its_partitions_and_the_other_leases_stay_held(
    own_cluster: RedisCluster, database_url: str, settings: Settings
) -> None:
    values = {f: getattr(settings, f) for f in settings.__struct_fields__}
    settings = Settings(**{**values, "redis_url": own_cluster.url, "redis_cluster": True})
    engine = Engine.from_url(own_cluster.url, settings.engine_config(), cluster=True)
    engine.load_scripts()
    try:
        frozen = own_cluster.masters[1]
        victim = next(n for n in partition_nodes(engine.redis, engine.keys) if n.name == frozen.address)
        skus = [f"SKU-{i}" for i in range(24)]
        elsewhere = [sku for sku in skus if engine.keys.for_sku(sku).index not in victim.partitions]
        live = frozenset(range(settings.partitions)) - set(victim.partitions)
        shop = Shop(engine, skus)
        shop.open(total=2000)
        with WorkerThread(settings, WorkerOptions(trim=False)) as worker:
            shop.burst(customers=60, threads=3, seed=7)
            assert worker.wait_drained(timeout_s=60)
            assert frozen.process is not None
            frozen.process.send_signal(signal.SIGSTOP)  # hangs without a word: no reset, no refusal
            try:
                after = Shop(engine, elsewhere)
                after.burst(customers=90, threads=3, seed=8)
                assert len(after.reservations) > 50
                # Past the lease (1.5 s) twice: the other partitions' leases must have been renewed.
                deadline = time.monotonic() + 30
                while True:
                    inventory = _sync_inventory(database_url)
                    wanted = {sku: engine.get_sale(sku) for sku in elsewhere}
                    if (
                        all(
                            inventory[sku] == (sale.available, sale.reserved, sale.sold)
                            for sku, sale in wanted.items()
                        )
                        and time.monotonic() > deadline - 27
                    ):
                        break
                    assert time.monotonic() < deadline, "the other masters' changes did not reach PostgreSQL"
                    time.sleep(0.1)
                assert worker.owned_partitions >= live, worker.owned_partitions
                # `worker lag` answers (it does not hang on the frozen master) and names it.
                shown = CliRunner().invoke(main, ["worker", "lag", "--json"], env=settings.as_env())
                assert shown.exit_code == 0, shown.output
                assert msgspec.json.decode(shown.output)["nodes_down"] == [frozen.address]
            finally:
                frozen.process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 20
            while worker.owned_partitions != frozenset(range(settings.partitions)):
                assert time.monotonic() < deadline, f"not taken again: {worker.owned_partitions}"
                time.sleep(0.05)
            assert worker.wait_drained(timeout_s=30)
        everything = Shop(engine, skus)
        everything.reservations = shop.reservations | after.reservations
        everything.orders = shop.orders | after.orders
        assert_postgres_equals_redis(engine, database_url, everything)
    finally:
        engine.close()
