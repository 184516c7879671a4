"""Fixtures that start real servers through the project's own launcher (flashsale.launcher).

Servers are started once per test session on free loopback ports and stopped after; each test gets a
clean database. Nothing here talks to a server the machine may already run.

Redis comes in two kinds: one server (every test) and a Redis Cluster of three masters (the tests marked
``@pytest.mark.cluster``, which then run once on each: ``test_x[single]``, ``test_x[cluster]``). The
``redis_url``, ``engine`` and ``async_engine`` fixtures follow the kind; ``on_cluster`` says which it is.
The cluster starts the first time a test asks for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from flashsale.engine import AsyncEngine, Engine, EngineConfig

from flashsale.launcher import KafkaBroker, PostgresServer, RedisCluster, RedisServer

CLUSTER_MASTERS = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: also run the test against a 3-master Redis Cluster (ids [single], [cluster])"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cluster"):
        metafunc.parametrize("redis_kind", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """ "single" (the default) or "cluster" (tests marked cluster run with both)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def on_cluster(redis_kind: str) -> bool:
    return redis_kind == "cluster"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of three masters (no replicas) from the launcher, for the whole session."""
    with RedisCluster(CLUSTER_MASTERS) as cluster:
        yield cluster


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_kind: str) -> str:
    """The URL of an emptied Redis of this test's kind (for a cluster: its startup node)."""
    if redis_kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        for node in cluster.masters:
            _flush(node.url)
        return cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    _flush(server.url)
    return server.url


@pytest.fixture
def engine_config() -> EngineConfig:
    return EngineConfig()


@pytest.fixture
def engine(redis_url: str, engine_config: EngineConfig, on_cluster: bool) -> Iterator[Engine]:
    e = Engine.from_url(redis_url, engine_config, max_connections=200, cluster=on_cluster)
    e.load_scripts()
    yield e
    e.close()


@pytest.fixture
async def async_engine(
    redis_url: str, engine_config: EngineConfig, on_cluster: bool
) -> AsyncIterator[AsyncEngine]:
    e = AsyncEngine.from_url(redis_url, engine_config, cluster=on_cluster)
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
