"""CLI test fixtures: drain the streams into PostgreSQL the worker's way (servers: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest
from flashsale.engine import Engine
from flashsale.writeback.batch import Batch
from flashsale.writeback.postgres import apply_batch, ensure_offset, unapplied

Drain = Callable[[Engine, str], int]


@pytest.fixture
def env(redis_url: str, database_url: str, on_cluster: bool) -> dict[str, str]:
    """The environment a `flashsale` command run by a test reads: this test's Redis and PostgreSQL."""
    return {
        "FLASHSALE_REDIS_URL": redis_url,
        "FLASHSALE_REDIS_CLUSTER": "1" if on_cluster else "0",
        "FLASHSALE_DATABASE_URL": database_url,
    }


@pytest.fixture
def drain() -> Drain:
    return drain_streams


def drain_streams(engine: Engine, database_url: str) -> int:
    """Applies every unapplied stream event to PostgreSQL with the worker's own code; returns how many."""

    async def run() -> int:
        applied = 0
        conn = await psycopg.AsyncConnection.connect(database_url)
        try:
            for partition in range(engine.config.partitions):
                offset = await ensure_offset(conn, partition)
                events = unapplied(engine.read_events(partition, after=offset), offset)
                if events:
                    await apply_batch(conn, Batch.fold(partition, events), offset)
                    applied += len(events)
        finally:
            await conn.close()
        return applied

    return asyncio.run(run())
