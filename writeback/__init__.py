"""Write-behind: drains the engine's Redis streams into PostgreSQL (exactly once in effect) and Kafka."""

from flashsale.writeback.lag import PartitionLag, nodes_down, read_lag, read_lag_async, total_lag
from flashsale.writeback.worker import (
    Worker,
    WorkerOptions,
    WorkerStats,
    WorkerThread,
    run_until_signalled,
    spawn_worker,
    wait_drained,
)

__all__ = [
    "PartitionLag",
    "Worker",
    "WorkerOptions",
    "WorkerStats",
    "WorkerThread",
    "nodes_down",
    "read_lag",
    "read_lag_async",
    "run_until_signalled",
    "spawn_worker",
    "total_lag",
    "wait_drained",
]
