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
