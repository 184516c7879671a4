"""Several workers split the partitions between them, never share one, and take over from a dead one."""

from __future__ import annotations

import itertools
import re
import signal
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import redis
from flashsale.engine import Engine
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, spawn_worker, wait_drained
from writeback_checks import Shop, assert_postgres_equals_redis

_LOG_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*event=partition_(?P<what>acquired|released) "
    r"worker=(?P<worker>\S+) partition=(?P<partition>\d+)"
)


def _holdings(client: redis.Redis, settings: Settings, *workers: str) -> dict[str, set[int]]:
    held = {}
    for name in workers:
        value = client.get(settings.keyspace().writeback_worker(name))
        held[name] = {int(p) for p in value.decode().split(",") if p} if value else set()
    return held


def _intervals(log: Path, killed_at: datetime | None) -> dict[int, list[tuple[datetime, datetime]]]:
    """When the worker of this log held each partition, from its own acquired/released lines."""
    spans: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    opened: dict[int, datetime] = {}
    for line in log.read_text().splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
        partition = int(match["partition"])
        if match["what"] == "acquired":
            opened[partition] = at
        else:
            spans[partition].append((opened.pop(partition), at))
    for partition, since in opened.items():
        assert killed_at is not None, f"partition {partition} never released"
        spans[partition].append((since, killed_at))
    return spans


def test_two_workers_split_partitions_and_the_survivor_takes_over_a_dead_ones(
    engine: Engine, settings: Settings, shop: Shop, stop_load: threading.Event, tmp_path: Path
) -> None:
    shop.open(total=5000)
    load = shop.keep_busy(stop_load)
    client = redis.Redis.from_url(str(settings.redis_url))
    logs = {name: tmp_path / f"{name}.log" for name in ("alpha", "beta")}
    alpha = spawn_worker(settings, WorkerOptions(worker_id="alpha"), log_path=logs["alpha"])
    beta = spawn_worker(settings, WorkerOptions(worker_id="beta"), log_path=logs["beta"])
    try:
        deadline = time.monotonic() + 20
        while True:
            held = _holdings(client, settings, "alpha", "beta")
            assert not held["alpha"] & held["beta"], f"a partition held by both: {held}"
            if len(held["alpha"]) == len(held["beta"]) == settings.partitions // 2:
                break
            assert time.monotonic() < deadline, f"the workers never split the partitions: {held}"
            time.sleep(0.05)

        alpha.send_signal(signal.SIGKILL)
        alpha.wait(10)
        killed_at = datetime.now()
        deadline = time.monotonic() + 6
        while _holdings(client, settings, "beta")["beta"] != set(range(settings.partitions)):
            assert time.monotonic() < deadline, "beta did not take over alpha's partitions within seconds"
            time.sleep(0.05)

        stop_load.set()
        load.join(10)
        assert wait_drained(settings, timeout_s=60)
        beta.send_signal(signal.SIGTERM)
        assert beta.wait(15) == 0, "SIGTERM must stop the worker cleanly"
    finally:
        for process in (alpha, beta):
            if process.poll() is None:
                process.kill()
                process.wait()
        client.close()

    assert "event=worker_stopped worker=beta" in logs["beta"].read_text()
    alpha_spans = _intervals(logs["alpha"], killed_at)
    beta_spans = _intervals(logs["beta"], None)
    assert set(alpha_spans) | set(beta_spans) == set(range(settings.partitions))
    for partition in range(settings.partitions):
        spans = sorted(alpha_spans.get(partition, []) + beta_spans.get(partition, []))
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"partition {partition} was held by two workers at once: {spans}"
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
