"""Fixtures of the CLI tests: a migrated PostgreSQL per test, and draining the streams the worker's way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from engine import Engine
from flashsale.launcher import PostgresServer
from writeback.batch import Batch
from writeback.database import migrate
from writeback.postgres import apply_batch, ensure_offset, unapplied


@pytest.fixture(scope="session")
def cli_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def migrated_database_url(cli_postgres: PostgresServer) -> Iterator[str]:
    """A fresh database with every migration applied, dropped after the test."""
    name = f"cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cli_postgres.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = cli_postgres.url_for(name)
    migrate(url)
    yield url
    with psycopg.connect(cli_postgres.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


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
