"""Redis keys of the write-behind worker. Per-partition keys carry the partition's hash tag (built from
``engine.keys.Partition.tag``), so they live in the same Redis Cluster slot as the partition's stream.

    fs:{p3}:writeback:lease   string  worker id holding the partition; expires unless renewed
    fs:{p3}:writeback         hash    applied (PostgreSQL), published (Kafka): stream ids taken by each sink;
                                      owner, updated_at (ms)
    fs:writeback:workers      zset    worker id -> last heartbeat (ms): the live workers that split partitions
    fs:writeback:worker:<id>  string  the partitions a worker holds (comma-separated), expires with the worker
"""

from __future__ import annotations

from engine.keys import Partition


def lease(partition: Partition) -> str:
    return f"{partition.tag}writeback:lease"


def progress(partition: Partition) -> str:
    return f"{partition.tag}writeback"


def workers(prefix: str) -> str:
    return f"{prefix}:writeback:workers"


def worker(prefix: str, worker_id: str) -> str:
    return f"{prefix}:writeback:worker:{worker_id}"
