"""Redis restored from an older AOF copy (issue 12, defects 5 and 6), end to end with real servers.

A Redis with an append-only file serves a sale while the worker drains it; a copy of its AOF is taken;
more is sold and drained; then redis-server is killed (-9) and restarted from the older copy, and serves
new requests before the worker returns. The worker must stop the partitions whose events Redis lost
(however far newer events moved the streams); `flashsale reconcile` must find the drift, ended
reservations and orders included; `--repair redis-from-postgres` must make Redis equal PostgreSQL plus
the unapplied events; and afterwards every acknowledged reservation and order reads back from Redis with
the status PostgreSQL has, and reconcile finds no drift.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec
import psycopg
import redis
from click.testing import CliRunner
from flashsale.engine import Engine
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, read_lag
from writeback_checks import Shop

from flashsale.cli import main
from flashsale.launcher import RedisServer


def _stalled(client: redis.Redis, settings: Settings) -> set[int]:
    return {lag.partition for lag in read_lag(client, settings.keyspace()) if lag.stalled_event is not None}


def _statuses(database_url: str) -> tuple[dict[str, str], dict[str, str]]:
    with psycopg.connect(database_url) as conn:
        reservations = dict(conn.execute("SELECT reservation_id, status::text FROM reservations").fetchall())
        orders = dict(conn.execute("SELECT order_id, status::text FROM orders").fetchall())
    return reservations, orders


def test_an_older_aof_restored_under_load_is_stopped_found_repaired_and_loses_nothing_acknowledged(
    settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "redis"
    server = RedisServer(data).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url)
    env = {**settings.as_env(), "FLASHSALE_REDIS_URL": server.url}
    runner = CliRunner()
    engine = Engine.from_url(server.url, settings.engine_config())
    try:
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        raw.config_set("appendfsync", "always")  # the copy taken below holds everything acknowledged so far
        engine.load_scripts()
        shop = Shop(engine, [f"AOF-{i}" for i in range(6)])
        shop.open(total=100_000)
        with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
            shop.burst(customers=120, threads=4, seed=1)
            assert worker.wait_drained(timeout_s=60)
            older = tmp_path / "appendonly.older.aof"
            shutil.copy(data / "appendonly.aof", older)
            shop.burst(customers=120, threads=4, seed=2)  # sold, acknowledged and drained after the copy
            assert worker.wait_drained(timeout_s=60)

        # redis-server dies; it comes back from the older copy and serves new shoppers at once.
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        shutil.copy(older, data / "appendonly.aof")
        server = RedisServer(data, port=server.port).start()
        engine.close()
        engine = Engine.from_url(server.url, settings.engine_config())
        engine.load_scripts()
        shop.engine = engine
        shop.burst(customers=60, threads=3, seed=3)

        # The worker stops the partitions that lost events, and applies nothing on top of them.
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        with WorkerThread(settings, WorkerOptions(sweep=False)):
            deadline = time.monotonic() + 20
            while not _stalled(raw, settings) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            stalled = _stalled(raw, settings)
        assert stalled, "no partition was stopped although Redis lost events"

        check = runner.invoke(main, ["reconcile", "--json"], env=env)
        assert check.exit_code == 1, check.output
        found = {d["check"] for d in msgspec.json.decode(check.stdout)["drift"]}
        assert {"postgres_plus_unapplied_equals_redis", "reservation_matches"} <= found

        repair = runner.invoke(main, ["reconcile", "--repair", "redis-from-postgres", "--yes"], env=env)
        assert repair.exit_code == 0, repair.output
        resumed = runner.invoke(main, ["worker", "resume", "--all"], env=env)
        assert resumed.exit_code == 0, resumed.output
        with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
            assert worker.wait_drained(timeout_s=60)
        assert not _stalled(raw, settings)
        final = runner.invoke(main, ["reconcile", "--json"], env=env)
        assert final.exit_code == 0, final.output

        # Every acknowledged reservation and order: in PostgreSQL, and in Redis with PostgreSQL's status.
        reservations, orders = _statuses(str(settings.database_url))
        assert shop.reservations <= set(reservations)
        assert shop.orders <= set(orders)
        for rid in shop.reservations:
            assert engine.get_reservation(rid).status == reservations[rid], rid
        for oid in shop.orders:
            assert engine.get_order(oid).status == orders[oid], oid
        raw.close()
    finally:
        engine.close()
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
