"""Failures: the worker killed mid-batch, PostgreSQL or the broker away under load. Nothing is lost or
applied twice, and the hot path keeps serving meanwhile."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from flashsale.engine import Engine
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, read_lag, spawn_worker, total_lag
from flashsale.writeback.database import migrate
from writeback_checks import Shop, all_events, assert_kafka_holds_every_event, assert_postgres_equals_redis

from flashsale.launcher import KafkaBroker, PostgresServer


def _settings(base: Settings, **changes: object) -> Settings:
    values = {field: getattr(base, field) for field in base.__struct_fields__}
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


def _pending(settings: Settings) -> int:
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        return total_lag(read_lag(client, settings.keyspace())).pending
    finally:
        client.close()


def _applied_in_postgres(settings: Settings) -> int:
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute("SELECT coalesce(sum(applied_events), 0) FROM stream_offsets").fetchone()
    return int(row[0]) if row else 0


def test_worker_killed_or_stopped_mid_batch_again_and_again_loses_and_repeats_nothing(
    engine: Engine, settings: Settings, shop: Shop, stop_load: threading.Event, tmp_path: Path
) -> None:
    shop.open(total=5000)
    load = [shop.keep_busy(stop_load, seed=s) for s in (1, 2)]
    options = WorkerOptions(batch_size=40, sweep=False, trim=False)
    rng = random.Random(3)
    applied = [_applied_in_postgres(settings)]
    for round_ in range(3):
        worker = spawn_worker(settings, options, log_path=tmp_path / f"worker-{round_}.log")
        try:
            # Kill once it is busy (its batches are reaching PostgreSQL), at a random moment of its work.
            deadline = time.monotonic() + 15
            while _applied_in_postgres(settings) == applied[-1]:
                assert time.monotonic() < deadline, "the restarted worker never applied a batch"
                time.sleep(0.02)
            time.sleep(0.2 + 0.5 * rng.random())
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        applied.append(_applied_in_postgres(settings))
    assert applied == sorted(set(applied)), f"every worker must apply batches before its kill: {applied}"

    # SIGTERM in the middle of the same load: the batch in flight finishes and the worker exits cleanly.
    log = tmp_path / "worker-terminated.log"
    worker = spawn_worker(settings, options, log_path=log)
    deadline = time.monotonic() + 15
    while _applied_in_postgres(settings) == applied[-1]:
        assert time.monotonic() < deadline, "the restarted worker never applied a batch"
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "event=worker_stopped" in log.read_text()
    stop_load.set()
    for thread in load:
        thread.join(10)
    assert shop.operations > 200
    assert _pending(settings) > 0, "the kills must leave work behind"

    with WorkerThread(settings, WorkerOptions(sweep=False, trim=False)) as survivor:
        assert survivor.wait_drained(timeout_s=60)
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    assert_kafka_holds_every_event(settings, all_events(engine), exactly_once=False)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, so stopping it cannot disturb any other test."""
    with PostgresServer() as server:
        migrate(server.url)
        yield server


def test_postgres_down_under_load_then_back_every_change_arrives(
    engine: Engine, settings: Settings, shop: Shop, stop_load: threading.Event, own_postgres: PostgresServer
) -> None:
    settings = _settings(settings, database_url=own_postgres.url)
    shop.open(total=5000)
    with WorkerThread(settings, WorkerOptions(trim=False, sweep=False, retry_max_s=0.5)) as worker:
        shop.burst(customers=60, threads=3, seed=11)
        assert worker.wait_drained(timeout_s=30)
        own_postgres.halt()
        served_before = shop.operations
        load = shop.keep_busy(stop_load, seed=12)
        time.sleep(3)
        assert shop.operations - served_before > 50, "reservations must keep succeeding meanwhile"
        assert _pending(settings) > 0
        assert worker.stats.sink_failures["postgres"] > 0
        own_postgres.start()
        time.sleep(0.5)
        stop_load.set()
        load.join(10)
        assert worker.wait_drained(timeout_s=60)
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    assert_kafka_holds_every_event(settings, all_events(engine), exactly_once=False)


def test_broker_frozen_under_load_then_back_every_event_arrives(
    engine: Engine, settings: Settings, shop: Shop, stop_load: threading.Event
) -> None:
    with KafkaBroker() as broker:
        settings = _settings(settings, kafka_bootstrap=broker.bootstrap)
        shop.open(total=5000)
        # A message timeout shorter than the outage: some sends fail and the batch is published again.
        options = WorkerOptions(trim=False, sweep=False, retry_max_s=0.5, message_timeout_ms=1500)
        with WorkerThread(settings, options) as worker:
            shop.burst(customers=60, threads=3, seed=21)
            assert worker.wait_drained(timeout_s=30)
            broker.pause()
            try:
                served_before = shop.operations
                load = shop.keep_busy(stop_load, seed=22)
                time.sleep(4)
                assert shop.operations - served_before > 50, "reservations must keep succeeding"
                assert _pending(settings) > 0
                assert worker.stats.sink_failures["kafka"] > 0
            finally:
                broker.resume()
            time.sleep(0.5)
            stop_load.set()
            load.join(10)
            assert worker.wait_drained(timeout_s=60)
        assert_postgres_equals_redis(engine, str(settings.database_url), shop)
        assert_kafka_holds_every_event(settings, all_events(engine), exactly_once=False)
