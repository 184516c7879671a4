"""The servers a scenario runs against: the ones given by URL, or fresh ones from the project's launcher."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from flashsale.launcher import PostgresServer, RedisServer


@dataclass
class Servers:
    redis_url: str
    database_url: str | None = None
    redis_pid: int | None = None


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def redis_cpu_seconds(url: str) -> float:
    """CPU time the Redis server has used so far (user + system), from INFO: what a run cost the server."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


@contextlib.contextmanager
def running(
    redis_url: str | None, *, postgres: bool = False, database_url: str | None = None
) -> Iterator[Servers]:
    """Servers for one scenario run; the ones this started are stopped after, whatever happens."""
    with contextlib.ExitStack() as stack:
        pid = None
        if redis_url is None:
            server = stack.enter_context(RedisServer())
            redis_url = server.url
            pid = server.process.pid if server.process else None
        if postgres and database_url is None:
            database_url = stack.enter_context(PostgresServer()).url
        yield Servers(redis_url, database_url, pid)
