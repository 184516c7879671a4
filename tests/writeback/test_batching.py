"""How a stream is cut into batches never changes what PostgreSQL ends up with."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from flashsale.engine import Engine
from flashsale.engine.events import Event, UnknownEvent, parse_entry
from flashsale.writeback.batch import Batch
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


@pytest.mark.parametrize(
    "body",
    [
        '["teleported","X",1]',  # a type this code does not know (a newer engine wrote it)
        '["reserved","X",1,"rsv_3_a"]',  # fields missing
        "not json",
    ],
)
def test_an_entry_this_worker_cannot_read_is_refused_with_a_clear_error(body: str) -> None:
    with pytest.raises(UnknownEvent, match="3-1-0 cannot be read"):
        parse_entry(3, "1-0", {"e": body})
