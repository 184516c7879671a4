"""Sold-out answers from memory across the worker processes of a real ``flashsale serve`` (api/soldout.py).

Each test talks to every worker on its own keep-alive connection (which process accepted a connection is
read from /proc), so "every worker" is checked, not hoped for. Redis is the judge of whether an answer
came from memory: INFO commandstats counts every script it ran.

- every worker answers a sold-out SKU without Redis, even with Redis stopped (SIGSTOP);
- each way stock comes back reaches every worker at once (the flags' TTL is 30 s here, so only the
  scripts' messages, or a hold's deadline, can be what cleared them);
- from a change to the first success through workers that had cached "sold out": the p99;
- a lost message (stock changed behind the scripts' back) is a false "sold out" for at most the TTL, and
  a dropped subscription drops every flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from flashsale.engine import AsyncEngine, Engine, SaleSettings
from flashsale.engine.keys import Keyspace
from flashsale.engine.settings import Settings

from flashsale.commands.token import mint
from flashsale.launcher import RedisServer, free_port, wait_for_port
from tests.api.conftest import SECRET

FLASHSALE = [sys.executable, "-c", "from flashsale.cli import main; main()"]
RESERVE = "/api/v1/reservations"
TOKENS = Settings(jwt_secret=SECRET)


# -- a served API and a connection to each of its workers ----------------------------------------------------
def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.extend(int(child) for child in children.read().split())
    return found


def _accepting_process(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the loopback connection from ``client_port``."""
    inode = None
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


@dataclass
class Served:
    """``flashsale serve --workers N`` in a subprocess, every worker subscribed to the stock channels."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    workers: int
    redis_url: str
    users: int = 0

    def token(self, user: str) -> str:
        return mint(TOKENS, user)

    def new_user(self) -> str:
        self.users += 1
        return f"shopper-{self.users}"

    def worker_pids(self) -> list[int]:
        return _children(self.process.pid)

    def connections(self, per_worker: int = 1) -> dict[int, list[http.client.HTTPConnection]]:
        """Keep-alive connections, ``per_worker`` to each worker process (whichever accepted them)."""
        pids = self.worker_pids()
        found: dict[int, list[http.client.HTTPConnection]] = {}
        spare: list[http.client.HTTPConnection] = []
        for _ in range(400):
            if len(found) == self.workers and all(len(c) >= per_worker for c in found.values()):
                break
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            connection.request("GET", "/health")
            connection.getresponse().read()
            pid = _accepting_process(self.port, connection.sock.getsockname()[1], pids)
            if pid is None or len(found.setdefault(pid, [])) >= per_worker:
                spare.append(connection)
            else:
                found[pid].append(connection)
        for connection in spare:
            connection.close()
        assert len(found) == self.workers, f"connections reached {len(found)} of {self.workers} workers"
        assert all(len(c) == per_worker for c in found.values())
        return found


def _environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHSALE_", "PROMETHEUS_"))}
    env.update(variables)
    return env


def _stock_subscribers(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        channel = Keyspace().partition(0).stock_channel()
        return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
    finally:
        client.close()


@contextlib.contextmanager
def serve(redis_url: str, *, workers: int, soldout_ttl_ms: int) -> Iterator[Served]:
    port = free_port()
    env = _environment(
        FLASHSALE_REDIS_URL=redis_url,
        FLASHSALE_JWT_SECRET=SECRET,
        FLASHSALE_PORT=str(port),
        FLASHSALE_WORKERS=str(workers),
        FLASHSALE_SOLDOUT_TTL_MS=str(soldout_ttl_ms),
        FLASHSALE_USER_RATE_LIMIT_PER_S="0",
    )
    process = subprocess.Popen(
        [*FLASHSALE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, 60, process)
        deadline = time.monotonic() + 30
        while _stock_subscribers(redis_url) < workers or len(_children(process.pid)) < workers:
            assert time.monotonic() < deadline, "the workers never all subscribed to the stock channels"
            time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", port, process, workers, redis_url)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def reserve(
    connection: http.client.HTTPConnection,
    served: Served,
    sku: str,
    user: str | None = None,
    quantity: int = 1,
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"skuId": sku, "quantity": quantity})
    headers = {
        "Authorization": f"Bearer {served.token(user or served.new_user())}",
        "Content-Type": "application/json",
    }
    connection.request("POST", RESERVE, body, headers)
    response = connection.getresponse()
    answer: dict[str, Any] = json.loads(response.read())
    return response.status, answer


def evalsha_calls(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()


def flag_everywhere(served: Served, connections: list[http.client.HTTPConnection], sku: str) -> None:
    """Every connection's worker refuses ``sku`` through Redis, then from memory: checked, by a round of
    requests none of which reached Redis. (A refusal that crossed a stock message, e.g. the one of the
    sale's own set-up, rightly sets no flag: the next request asks Redis again.)"""
    deadline = time.monotonic() + 10
    while True:
        scripts = evalsha_calls(served.redis_url)
        for connection in connections:
            status, answer = reserve(connection, served, sku)
            assert status == 400, answer
            assert answer["error"] == "OUT_OF_STOCK"
        if evalsha_calls(served.redis_url) == scripts:
            return
        assert time.monotonic() < deadline, "a worker kept asking Redis about a sold-out SKU"


def every_worker_succeeds(
    served: Served, connections: list[http.client.HTTPConnection], sku: str, within_s: float
) -> list[float]:
    """Each connection's next reserves until one succeeds; how long each took from now."""
    started = time.monotonic()
    took = []
    for connection in connections:
        while (answer := reserve(connection, served, sku))[0] != 201:
            assert answer[0] == 400, answer
            assert time.monotonic() - started < within_s, f"still {answer} after {within_s} s"
            time.sleep(0.002)
        took.append(time.monotonic() - started)
    return took


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[Served]:
    """Two workers whose flags last 30 s: a prompt success can only come from a message or a deadline."""
    with serve(redis_server.url, workers=2, soldout_ttl_ms=30_000) as api:
        yield api


@pytest.fixture
def engine_for(served: Served) -> Iterator[Engine]:
    engine = Engine.from_url(served.redis_url)
    engine.load_scripts()
    yield engine
    engine.close()


# -- answered without Redis ----------------------------------------------------------------------------------
def test_every_worker_answers_a_sold_out_sku_without_redis(served: Served, engine_for: Engine) -> None:
    engine_for.load_sale(SaleSettings(sku="SRV-GONE", total=0))
    connections = [c for group in served.connections(per_worker=2).values() for c in group]
    flag_everywhere(served, connections, "SRV-GONE")
    scripts = evalsha_calls(served.redis_url)
    for _ in range(25):
        for connection in connections:
            assert reserve(connection, served, "SRV-GONE")[0] == 400
    assert evalsha_calls(served.redis_url) == scripts


def test_with_redis_stopped_a_flagged_sku_is_still_refused_and_others_wait() -> None:
    with RedisServer() as private, serve(private.url, workers=2, soldout_ttl_ms=60_000) as api:
        engine = Engine.from_url(private.url)
        engine.load_scripts()
        engine.load_sale(SaleSettings(sku="STOP-GONE", total=0))
        engine.load_sale(SaleSettings(sku="STOP-PLENTY", total=100))
        engine.close()
        by_worker = api.connections()
        connections = [group[0] for group in by_worker.values()]
        flag_everywhere(api, connections, "STOP-GONE")
        assert private.process is not None
        os.kill(private.process.pid, signal.SIGSTOP)
        try:
            for connection in connections:
                started = time.monotonic()
                status, answer = reserve(connection, api, "STOP-GONE")
                assert (status, answer["error"]) == (400, "OUT_OF_STOCK")
                assert time.monotonic() - started < 1.0
            for connection in connections:
                connection.timeout = 1.0
                connection.sock.settimeout(1.0)
                try:
                    status, answer = reserve(connection, api, "STOP-PLENTY")
                except TimeoutError:
                    continue  # the request waits on Redis: it was never answered from memory
                assert status == 503, answer
        finally:
            os.kill(private.process.pid, signal.SIGCONT)
            for connection in connections:
                connection.close()


# -- each way stock comes back -------------------------------------------------------------------------------
def _sleep_past(engine: Engine, deadline_ms: int) -> None:
    seconds, micros = engine.redis.time()
    time.sleep(max(0, deadline_ms - (seconds * 1000 + micros // 1000) + 20) / 1000)


def _sold_out_by(engine: Engine, sku: str, units: int, **fields: Any) -> None:
    """A sale of ``units`` units (a per-user limit of 10, holds of 10 minutes unless told)."""
    settings = {"total": units, "per_user_limit": 10, "reservation_ttl_ms": 600_000, **fields}
    engine.load_sale(SaleSettings(sku=sku, **settings))


Change = Callable[[Engine, str, int], Callable[[], object]]


def _release(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, units)
    hold = engine.reserve(sku, "holder", units)
    return lambda: engine.release(hold.id, "holder")


def _sweep(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, units, reservation_ttl_ms=1000)
    hold = engine.reserve(sku, "holder", units)

    def change() -> None:
        _sleep_past(engine, hold.expires_at)
        assert engine.expire_all() >= 1

    return change


def _lazy_expiry(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    # No sweeper: the first reserve after the deadline ends the hold itself. The flags end at that
    # deadline, which reserve's refusal told every worker.
    _sold_out_by(engine, sku, units, reservation_ttl_ms=1000)
    hold = engine.reserve(sku, "holder", units)
    return lambda: _sleep_past(engine, hold.expires_at)


def _restock(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, 0)
    return lambda: engine.restock(sku, units)


def _more_units_on_sale(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, 0)
    return lambda: engine.load_sale(SaleSettings(sku=sku, total=units))


def _cancel_confirmed(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, units)
    order = engine.begin_checkout(engine.reserve(sku, "holder", units).id, "holder", "CREDIT_CARD")
    engine.confirm(order.id, "holder")
    return lambda: engine.cancel_order(order.id, "holder")


def _cancel_paying(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, units)
    order = engine.begin_checkout(engine.reserve(sku, "holder", units).id, "holder", "CREDIT_CARD")
    return lambda: engine.cancel_order(order.id, "holder")


def _payment_failed_after_the_hold_lapsed(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    # The hold is kept for its payment grace (30 s): the workers were told the first hold ends then. The
    # payment fails after the hold's own 1 s: it is lapsed at once, and reserve may end it.
    _sold_out_by(engine, sku, units, reservation_ttl_ms=1000)
    hold = engine.reserve(sku, "holder", units)
    order = engine.begin_checkout(hold.id, "holder", "CREDIT_CARD")

    def change() -> None:
        _sleep_past(engine, hold.expires_at)
        engine.fail_checkout(order.id, "holder")

    return change


def _resume(engine: Engine, sku: str, units: int) -> Callable[[], object]:
    _sold_out_by(engine, sku, 0)

    def change() -> None:
        engine.load_sale(SaleSettings(sku=sku, paused=True))
        engine.restock(sku, units)  # while paused: SALE_NOT_ACTIVE, which is never answered from memory
        engine.load_sale(SaleSettings(sku=sku, paused=False))

    return change


@pytest.mark.parametrize(
    "change",
    [
        _release,
        _sweep,
        _lazy_expiry,
        _restock,
        _more_units_on_sale,
        _cancel_confirmed,
        _cancel_paying,
        _payment_failed_after_the_hold_lapsed,
        _resume,
    ],
    ids=lambda change: change.__name__.strip("_"),
)
def test_stock_coming_back_reaches_every_worker_at_once(
    served: Served, engine_for: Engine, change: Change, request: pytest.FixtureRequest
) -> None:
    sku = f"WAY-{request.node.callspec.id}"
    connections = [group[0] for group in served.connections().values()]
    make_change = change(engine_for, sku, len(connections))
    flag_everywhere(served, connections, sku)
    make_change()
    took = every_worker_succeeds(served, connections, sku, within_s=1.0)  # the flags' TTL is 30 s
    assert max(took) < 1.0


# -- the unsafe direction never, a false "sold out" at most the TTL ------------------------------------------
def test_a_lost_message_leaves_a_false_sold_out_for_at_most_the_ttl(redis_url: str) -> None:
    ttl_s = 1.0
    with serve(redis_url, workers=2, soldout_ttl_ms=int(ttl_s * 1000)) as api:
        engine = Engine.from_url(redis_url)
        engine.load_sale(SaleSettings(sku="LOST", total=0))
        connections = [group[0] for group in api.connections().values()]
        flag_everywhere(api, connections, "LOST")
        # Stock appears behind the scripts' back: no script ran, so no message was sent. (The sale's
        # counters still add up; only its event log misses the change, which no test reads here.)
        engine.redis.hset(engine.keys.for_sku("LOST").sku("LOST"), mapping={"total": 2, "available": 2})
        changed = time.monotonic()
        for connection in connections:
            assert reserve(connection, api, "LOST")[0] == 400  # stale, from memory: the flag is fresh
        took = every_worker_succeeds(api, connections, "LOST", within_s=ttl_s + 2.0)
        assert max(took) <= ttl_s + 2.0
        assert time.monotonic() - changed > 0.2  # it was the TTL, not a message, that ended it
        engine.close()


def test_a_dropped_subscription_drops_every_flag_and_is_taken_up_again(
    served: Served, engine_for: Engine
) -> None:
    engine_for.load_sale(SaleSettings(sku="DROP", total=0, per_user_limit=10))
    connections = [group[0] for group in served.connections().values()]
    flag_everywhere(served, connections, "DROP")
    killed = engine_for.redis.client_kill_filter(_type="pubsub")
    assert killed >= served.workers
    # Stock appears with no message: only having dropped the flags lets the workers see it in time.
    sku_key = engine_for.keys.for_sku("DROP").sku("DROP")
    engine_for.redis.hset(sku_key, mapping={"total": 2, "available": 2})
    every_worker_succeeds(served, connections, "DROP", within_s=2.0)  # the TTL is 30 s
    deadline = time.monotonic() + 10
    while _stock_subscribers(served.redis_url) < served.workers:
        assert time.monotonic() < deadline, "the workers did not subscribe again"
        time.sleep(0.05)
    # Listening again: flags are set, and a script's message clears them.
    flag_everywhere(served, connections, "DROP")
    engine_for.restock("DROP", 2)
    every_worker_succeeds(served, connections, "DROP", within_s=1.0)


# -- from a change to the first success: the p99 -------------------------------------------------------------
class RawConnection:
    """A keep-alive HTTP/1.1 connection that costs the test next to nothing per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @property
    def local_port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])

    async def post(self, path: str, body: bytes, token: str) -> int:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), token.encode(), len(body), body)
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


@dataclass
class Rounds:
    """What the pollers do: idle, warm (poll: every answer sold out), measure (poll until a 201)."""

    phase: str = "idle"
    started: float = 0.0
    succeeded: set[int] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    stop: bool = False


async def _poll(index: int, connection: RawConnection, body: bytes, token: str, rounds: Rounds) -> None:
    while not rounds.stop:
        if rounds.phase == "idle" or (rounds.phase == "measure" and index in rounds.succeeded):
            await asyncio.sleep(0.001)
            continue
        phase = rounds.phase
        status = await connection.post(RESERVE, body, token)
        if status == 201 and phase == "measure" and rounds.phase == "measure":
            rounds.latencies_ms.append((time.perf_counter() - rounds.started) * 1000)
            rounds.succeeded.add(index)
        elif status != 400:
            rounds.unexpected.append(f"{status} while {phase}")
        await asyncio.sleep(0.001)  # a shopper pressing again: ~1,000/s per connection


async def _await_quiet(redis_url: str, window_s: float = 0.1, limit_s: float = 10.0) -> None:
    """Until Redis runs no script for ``window_s``: every polling worker answers from memory."""
    deadline = time.monotonic() + limit_s
    before = evalsha_calls(redis_url)
    while True:
        await asyncio.sleep(window_s)
        now = evalsha_calls(redis_url)
        if now == before:
            return
        assert time.monotonic() < deadline, "the workers never all answered from memory"
        before = now


async def _change_to_success(api: Served, rounds_wanted: int, per_worker: int) -> Rounds:
    pids = api.worker_pids()
    by_worker: dict[int, list[RawConnection]] = {}
    opened: list[RawConnection] = []
    for _ in range(400):
        if len(by_worker) == api.workers and all(len(c) >= per_worker for c in by_worker.values()):
            break
        connection = await RawConnection.open(api.port)
        opened.append(connection)
        assert await connection.post("/health", b"", "-") in (200, 405)  # accepted: its worker is known
        pid = _accepting_process(api.port, connection.local_port, pids)
        if pid is not None and len(by_worker.setdefault(pid, [])) < per_worker:
            by_worker[pid].append(connection)
    pollers = [c for group in by_worker.values() for c in group]
    assert len(by_worker) == api.workers
    assert len(pollers) == api.workers * per_worker
    units = len(pollers)

    sku = "P99"
    engine = AsyncEngine.from_url(api.redis_url)
    await engine.load_scripts()
    await engine.load_sale(
        SaleSettings(sku=sku, total=0, per_user_limit=100_000, reservation_ttl_ms=3_600_000)
    )
    body = json.dumps({"skuId": sku}).encode()
    rounds = Rounds()
    tasks = [
        asyncio.create_task(_poll(i, c, body, api.token(f"poller-{i}"), rounds))
        for i, c in enumerate(pollers)
    ]
    try:
        for n in range(rounds_wanted):
            rounds.phase, rounds.succeeded = "idle", set()
            await asyncio.sleep(0.005)  # pollers' requests in flight land
            release = None
            if n % 2:  # every other round, the units come back from a hold being released
                sale = await engine.get_sale(sku)
                await engine.load_sale(SaleSettings(sku=sku, total=sale.total + units))
                release = await engine.reserve(sku, "holder", units)
            rounds.phase = "warm"
            await _await_quiet(api.redis_url)
            rounds.phase, rounds.started = "measure", time.perf_counter()
            if release is None:
                await engine.restock(sku, units)
            else:
                await engine.release(release.id, "holder")
            deadline = time.monotonic() + 10
            while len(rounds.succeeded) < units:
                assert time.monotonic() < deadline, f"round {n}: {len(rounds.succeeded)} of {units} got one"
                await asyncio.sleep(0.001)
    finally:
        rounds.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in opened:
            connection.close()
        await engine.close()
    return rounds


def test_p99_from_a_change_to_the_first_success_through_workers_that_cached_sold_out(redis_url: str) -> None:
    """Three workers, two connections each, every one of them answering "sold out" from memory; then
    units come back (a restock, or a hold released) and each connection keeps asking until it gets one.
    One sample per connection per round: from just before the change to that connection's 201."""
    with serve(redis_url, workers=3, soldout_ttl_ms=30_000) as api:
        rounds = asyncio.run(_change_to_success(api, rounds_wanted=40, per_worker=2))
    assert not rounds.unexpected, rounds.unexpected
    latencies = sorted(rounds.latencies_ms)
    assert len(latencies) == 40 * 6
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"change -> first success, {len(latencies)} samples: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    # The target is p99 <= 100 ms. Measured on the shared 2-core VM: 13-43 ms, and 80-90 ms with every
    # core also busy with other work (README, Sold out); asserted with room for a loaded machine.
    assert p50 <= 50
    assert p99 <= 250
