"""The whole write-behind stack for the end-to-end scenarios: Redis, PostgreSQL (migrated), a Kafka-compatible
broker, and ``flashsale worker`` as its own process, as in production; ``flashsale reconcile`` at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from flashsale.bench.servers import DEFAULT_SERVER, ServerKind
from flashsale.engine.settings import Settings
from flashsale.writeback.database import migrate
from flashsale.writeback.lag import PartitionLag, read_lag, total_lag

from flashsale.launcher import KafkaBroker, PostgresServer

# `flashsale ARGS` in a child process, with whatever Python runs the benchmark.
FLASHSALE = [sys.executable, "-c", "import sys; from flashsale.cli import main; sys.exit(main())"]


@dataclass
class Stack:
    settings: Settings

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.as_env()}

    @contextlib.contextmanager
    def worker(self, *args: str) -> Iterator[subprocess.Popen[bytes]]:
        """``flashsale worker`` running until the block ends (SIGTERM, then wait for a clean exit)."""
        log = open(os.devnull, "wb")  # noqa: SIM115 - the child's log; its own lines are not the figures
        process = subprocess.Popen(
            [*FLASHSALE, "--log-level", "WARNING", "worker", *args], env=self.env(), stdout=log, stderr=log
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()

    def lag(self) -> PartitionLag:
        client = redis.Redis.from_url(str(self.settings.redis_url), decode_responses=True)
        try:
            return total_lag(read_lag(client, self.settings.keyspace()))
        finally:
            client.close()

    def wait_drained(self, timeout_s: float) -> tuple[bool, float]:
        """Waits until PostgreSQL and Kafka have every event; returns (drained, seconds waited)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if self.lag().pending == 0:
                return True, time.perf_counter() - started
            time.sleep(0.1)
        return False, time.perf_counter() - started

    def reconcile(self) -> tuple[int, dict[str, Any]]:
        """``flashsale reconcile --json``: its exit code (0 = no drift) and its report."""
        out = subprocess.run(
            [*FLASHSALE, "--log-level", "WARNING", "reconcile", "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        try:
            report: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError:
            report = {"stdout": out.stdout[-2000:], "stderr": out.stderr[-2000:]}
        return out.returncode, report


@contextlib.contextmanager
def write_behind_stack(
    redis_url: str | None,
    database_url: str | None,
    kafka_bootstrap: str | None,
    server: str = DEFAULT_SERVER,
    **settings: Any,
) -> Iterator[Stack]:
    """Servers given by URL are used as they are; the others are started here (Redis: the ``server``
    kind, bench/servers.py) and stopped after."""
    with contextlib.ExitStack() as stack:
        redis_url = redis_url or stack.enter_context(ServerKind.parse(server).server()).url
        database_url = database_url or stack.enter_context(PostgresServer()).url
        bootstrap = kafka_bootstrap or stack.enter_context(KafkaBroker()).bootstrap
        migrate(database_url)
        yield Stack(
            Settings.from_env(
                redis_url=redis_url, database_url=database_url, kafka_bootstrap=bootstrap, **settings
            )
        )
