"""How a stream is cut into batches never changes what PostgreSQL ends up with."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from flashsale.engine import Engine
from flashsale.engine.events import Event
from flashsale.writeback.batch import Batch, UnknownEvent
from flashsale.writeback.database import migrate
from flashsale.writeback.postgres import apply_batch, ensure_offset
from writeback_checks import Shop, all_events, assert_postgres_equals_redis, postgres_snapshot

from flashsale.launcher import PostgresServer


@pytest.fixture
def fresh_databases(postgres_server: PostgresServer) -> Iterator[list[str]]:
    names = [f"split_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    admin = postgres_server.url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    urls = [postgres_server.url_for(name) for name in names]
    for url in urls:
        migrate(url)
    yield urls
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _apply_in_batches(database_url: str, events: list[Event], size: int) -> None:
    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url)
        try:
            for partition in sorted({e.partition for e in events}):
                mine = [e for e in events if e.partition == partition]
                applied = await ensure_offset(conn, partition)
                for start in range(0, len(mine), size):
                    applied = await apply_batch(
                        conn, Batch.fold(partition, mine[start : start + size]), applied
                    )
        finally:
            await conn.close()

    asyncio.run(run())


def test_one_event_per_batch_or_all_at_once_gives_the_same_rows(
    engine: Engine, shop: Shop, fresh_databases: list[str]
) -> None:
    shop.open()
    shop.burst(customers=240, threads=4)
    events = all_events(engine)
    for url, size in zip(fresh_databases, (1, 13, len(events)), strict=True):
        _apply_in_batches(url, events, size)
    one, thirteen, whole = (postgres_snapshot(url) for url in fresh_databases)
    assert one == thirteen == whole
    assert_postgres_equals_redis(engine, fresh_databases[0], shop)


def test_an_event_type_this_worker_does_not_know_stops_the_batch_with_a_clear_error() -> None:
    event = Event(
        id="3-1-0", partition=3, stream_id="1-0", type="teleported", sku="X", at=1, da=0, dr=0, ds=0, dt=0
    )
    with pytest.raises(UnknownEvent, match="3-1-0 has unknown type 'teleported'"):
        Batch.fold(3, [event])
