"""Fixtures that start real servers through the project's own launcher (flashsale.launcher).

Servers are started once per test session on free loopback ports and stopped after; each test gets a
clean database. Nothing here talks to a server the machine may already run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from flashsale.engine import AsyncEngine, Engine, EngineConfig

from flashsale.launcher import KafkaBroker, PostgresServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def engine_config() -> EngineConfig:
    return EngineConfig()


@pytest.fixture
def engine(redis_url: str, engine_config: EngineConfig) -> Iterator[Engine]:
    e = Engine.from_url(redis_url, engine_config, max_connections=200)
    e.load_scripts()
    yield e
    e.close()


@pytest.fixture
async def async_engine(redis_url: str, engine_config: EngineConfig) -> AsyncIterator[AsyncEngine]:
    e = AsyncEngine.from_url(redis_url, engine_config)
    await e.load_scripts()
    yield e
    await e.close()


# -- PostgreSQL and Kafka (write-behind) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def _migrated_database(postgres_server: PostgresServer) -> str:
    from flashsale.writeback.database import migrate

    migrate(postgres_server.url)
    return postgres_server.url


@pytest.fixture
def database_url(_migrated_database: str) -> str:
    """The session's database with every migration applied and every table emptied for this test."""
    import psycopg
    from flashsale.writeback.database import queries

    with psycopg.connect(_migrated_database, autocommit=True) as conn:
        conn.execute(queries()["delete_all_rows"])
    return _migrated_database


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    with KafkaBroker() as broker:
        yield broker
