"""What every scenario is told: where the servers are, how long it may run, where results go."""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flashsale.bench.report import RESULTS_DIR


def default_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


@dataclass
class Options:
    quick: bool = False
    redis_url: str | None = None
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    results_dir: Path = RESULTS_DIR
    loop: str = field(default_factory=default_loop)
    plots: bool = True
    # redis-benchmark (Debian's redis-tools) for the server's own ceiling; off in CI's smoke test.
    redis_benchmark: bool = True
    # Redis Cluster sizes (masters) to run on instead of one Redis (many-skus), and the client processes.
    redis_cluster: tuple[int, ...] = ()
    client_processes: int = 1
    # The Redis-protocol server(s) the launcher starts (bench/servers.py): one for a scenario (default
    # "redis", the embedded default), several side by side for `servers`.
    servers: tuple[str, ...] = ()
    # memory: held reservations per variant (0: the scenario's default)
    holds: int = 0
    # many-skus --redis-cluster: attempts per cluster size (0: the scenario's default)
    attempts: int = 0
    # http-scaling: uvicorn worker counts to run (empty: 1 and 2)
    api_workers: tuple[int, ...] = ()
    # http-scaling: wrk's connections (0: the scenario's default)
    connections: int = 0
    # many-skus --redis-cluster: asyncio clients per client process (0: the scenario's default)
    clients: int = 0
    # hot-sku-buckets: the stock bucket counts to compare (empty: 1, 2, 4, 8) and the units per run (0: the
    # scenario's default)
    buckets: tuple[int, ...] = ()
    units: int = 0

    @property
    def server(self) -> str:
        return self.servers[0] if self.servers else "redis"

    # Unique per run, so a scenario pointed at a shared server never touches another run's keys.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
