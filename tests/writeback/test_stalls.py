"""A partition the worker must stop: an event a sink can never take, or a stream that lost events.

Issue 12, defects 3 and 6: one event PostgreSQL refused (integer out of range) made the worker retry
forever, silently, holding back every SKU of its partition; and a Redis that lost events was not reported
once newer events had moved the stream past PostgreSQL's offset. Now the worker applies everything before
such an event, stops only that partition, says so (log, the stall mark `flashsale worker lag` and the
`flashsale_writeback_partition_stalled` metric read), and goes on when an operator resumes it.
"""

from __future__ import annotations

import json
import time

import psycopg
import redis
from click.testing import CliRunner
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.keys import Keyspace
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, read_lag

from flashsale.cli import main


def _stalled(settings: Settings) -> dict[int, str]:
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        lags = read_lag(client, settings.keyspace())
    finally:
        client.close()
    return {lag.partition: str(lag.stalled_event) for lag in lags if lag.stalled_event is not None}


def _wait(condition: object, timeout_s: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _two_skus_in_two_partitions(engine: Engine) -> tuple[str, str]:
    keys, skus = engine.keys, []
    n = 0
    while len(skus) < 2:
        sku = f"STALL-{n}"
        if not skus or keys.for_sku(sku).index != keys.for_sku(skus[0]).index:
            skus.append(sku)
        n += 1
    return skus[0], skus[1]


def _inventory(settings: Settings, sku: str) -> tuple[int, int] | None:
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute(
            "SELECT total_count, reserved_count FROM inventory WHERE sku_id = %s", (sku,)
        ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def test_an_event_postgresql_refuses_stops_only_its_partition_loudly_until_resumed(
    engine: Engine, settings: Settings
) -> None:
    poisoned, healthy = _two_skus_in_two_partitions(engine)
    for sku in (poisoned, healthy):
        engine.load_sale(SaleSettings(sku=sku, name=sku, total=10, per_user_limit=5))
    before = engine.reserve(poisoned, "early")  # applied: it comes before the bad event
    # A total no PostgreSQL integer column can hold, as a script of an older release let through
    # (`restock` twice by 1e9): written into the stream the way that script wrote it.
    partition = engine.keys.for_sku(poisoned)
    engine.redis.xadd(
        partition.events(), {"e": json.dumps(["restocked", poisoned, 1, 3_000_000_000, 3_000_000_010])}
    )
    after = engine.reserve(poisoned, "late")  # stays behind the bad event

    runner = CliRunner()
    env = settings.as_env()
    with WorkerThread(settings, WorkerOptions(sweep=False)):
        _wait(lambda: poisoned_partition_stalled(settings, partition.index))
        engine.reserve(healthy, "meanwhile")
        _wait(lambda: _inventory(settings, healthy) == (10, 1))  # the other partition keeps draining
        assert _inventory(settings, poisoned) == (10, 1)  # everything before the bad event, nothing after
        lag = runner.invoke(main, ["worker", "lag"], env=env)
        assert f"STALLED partition {partition.index}: postgres cannot take event" in lag.output
        assert "out of range" in lag.output
        assert f"flashsale worker resume {partition.index}" in lag.output

        # The operator removes the event (here: the data is wrong; a migration would be the other fix).
        stalled_at = _stalled(settings)[partition.index]
        engine.redis.xdel(partition.events(), stalled_at)
        resumed = runner.invoke(main, ["worker", "resume", str(partition.index)], env=env)
        assert resumed.exit_code == 0, resumed.output
        _wait(lambda: _inventory(settings, poisoned) == (10, 2))
    assert _stalled(settings) == {}
    assert engine.get_reservation(before.id).status == engine.get_reservation(after.id).status == "RESERVED"


def poisoned_partition_stalled(settings: Settings, partition: int) -> bool:
    return partition in _stalled(settings)


def test_an_entry_this_worker_cannot_read_stops_its_partition(engine: Engine, settings: Settings) -> None:
    engine.load_sale(SaleSettings(sku="NEWER", total=5))
    partition = engine.keys.for_sku("NEWER")
    engine.redis.xadd(partition.events(), {"e": json.dumps(["teleported", "NEWER", 1])})  # a newer engine
    with WorkerThread(settings, WorkerOptions(sweep=False)):
        _wait(lambda: poisoned_partition_stalled(settings, partition.index))
    client = redis.Redis.from_url(str(settings.redis_url), decode_responses=True)
    try:
        lag = next(lag for lag in read_lag(client, settings.keyspace()) if lag.partition == partition.index)
    finally:
        client.close()
    assert lag.stalled_sink == "worker"
    assert "cannot be read" in str(lag.stalled_error)
    assert _inventory(settings, "NEWER") == (5, 0)  # the sale before it did reach PostgreSQL


def test_events_redis_lost_stop_the_partition_even_after_newer_events_moved_the_stream_on(
    engine: Engine, settings: Settings
) -> None:
    """Defect 6: the old check compared the stream's last id with PostgreSQL's offset, so events made
    after Redis lost data hid the loss."""
    engine.load_sale(SaleSettings(sku="LOST", total=100, per_user_limit=5))
    keys: Keyspace = engine.keys
    partition = keys.for_sku("LOST")
    older_copy = {key: engine.redis.dump(key) for key in engine.redis.keys(f"{partition.tag}*")}
    for n in range(5):
        engine.reserve("LOST", f"before-{n}")
    with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
        assert worker.wait_drained(timeout_s=30)
    # Redis comes back from the older copy (a restore), then serves new requests before the worker returns.
    raw = redis.Redis.from_url(str(settings.redis_url))
    raw.flushall()
    for key, value in older_copy.items():
        raw.restore(key, 0, value)
    for n in range(3):
        engine.reserve("LOST", f"after-{n}")
    with psycopg.connect(str(settings.database_url)) as conn:
        applied = conn.execute(
            "SELECT applied_id FROM stream_offsets WHERE partition = %s", (partition.index,)
        ).fetchone()
    assert applied is not None
    last = engine.redis.xinfo_stream(partition.events())["last-generated-id"]
    assert tuple(map(int, last.split("-"))) > tuple(
        map(int, applied[0].split("-"))
    )  # the old check's blind spot

    with WorkerThread(settings, WorkerOptions(sweep=False)):
        _wait(lambda: poisoned_partition_stalled(settings, partition.index))
        time.sleep(0.5)
    assert _stalled(settings)[partition.index] == applied[0]
    assert _inventory(settings, "LOST") == (100, 5)  # nothing applied on top of the loss
    raw.close()
