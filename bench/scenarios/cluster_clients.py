"""Which client carries reservations to a Redis Cluster: the well-kept cluster clients measured side by side
with flashsale's own per-node auto-pipeline, on the same cluster, with the same work and equal guarantees.

Each candidate runs the real reserve script by EVALSHA (keys, arguments and reply decoding from
``engine.operations``, so only the transport differs) over 1,000 SKUs spread over the cluster's masters,
each attempt a distinct user, with stock enough for every call: every call does the script's full work.

- ``flashsale``: ``AsyncEngine`` on the cluster (``engine/cluster.py``): calls queued per node and written as
  one pipeline per node per loop turn, raw hiredis reads, MOVED/ASK/TRYAGAIN followed, no re-send after a
  connection error.
- ``flashsale, one node``: the single-Redis ``AsyncEngine`` pointed at one master, given only that master's
  SKUs: what a call costs without any routing (the floor for the cluster client).
- ``redis-py``: ``redis.asyncio.cluster.RedisCluster``, one EVALSHA per call on a pooled connection (it has
  no auto-pipelining), retries off (``Retry(NoBackoff(), 0)``) so a lost reply is not re-sent.
- ``coredis``: ``coredis.RedisCluster`` (RESP3), its retry policy limited to CLUSTERDOWN: the default also
  retries ConnectionError and TimeoutError, which re-sends a script whose reply was lost.
- ``valkey-glide``: ``GlideClusterClient.invoke_script`` (Rust core, one multiplexed connection per node,
  automatic pipelining). We found no setting that promises a request is never re-sent after a dropped
  connection (its recovery queue re-sends only requests not yet written, by its documentation).

Then the guarantee probe, per candidate: the same reserve calls on one SKU with a per-user limit of 1,000
while a thread kills every client connection of every master (CLIENT KILL) every 20 ms. Each attempt is a
distinct user, so a user holding two reservations means a script ran twice for one call.

Install the candidates to run it: ``pip install valkey-glide coredis`` (not dependencies of flashsale).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from flashsale.bench.load import drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_cpu_seconds
from flashsale.engine import AsyncEngine, Engine, SaleSettings
from flashsale.engine.operations import Operations
from flashsale.engine.scripts import load_scripts
from flashsale.engine.settings import EngineConfig
from redis.crc import key_slot

from flashsale.launcher import RedisCluster

Reserve = Callable[[str, str], Awaitable[object]]
Factory = Callable[["Context"], contextlib.AbstractAsyncContextManager[Reserve]]


@dataclass
class Settings:
    masters: int
    skus: int
    clients: int
    attempts: int
    rounds: int
    max_seconds: float
    probe_attempts: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(3, 1000, 1000, 20_000, 1, 15.0, 5_000, options.loop)
        return cls(3, 1000, 1000, 60_000, 3, 30.0, 20_000, options.loop)


@dataclass
class Context:
    cluster: RedisCluster
    config: EngineConfig
    ops: Operations
    sha: str
    source: str


# -- candidates --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _flashsale(ctx: Context) -> AsyncIterator[Reserve]:
    engine = AsyncEngine.from_url(ctx.cluster.url, ctx.config, cluster=True, max_connections=64)
    await engine.load_scripts()
    try:
        yield lambda sku, user: engine.reserve(sku, user)
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def _flashsale_one_node(ctx: Context) -> AsyncIterator[Reserve]:
    engine = AsyncEngine.from_url(ctx.cluster.masters[0].url, ctx.config, max_connections=64)
    for script in engine.scripts.values():  # not load_scripts: fs:{layout} lives on another master
        await engine.redis.script_load(script.source)
    try:
        yield lambda sku, user: engine.reserve(sku, user)
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def _redis_py(ctx: Context) -> AsyncIterator[Reserve]:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = AsyncRedisCluster.from_url(
        ctx.cluster.url, decode_responses=True, retry=Retry(NoBackoff(), 0), max_connections=2000
    )
    await client.initialize()
    ops, sha = ctx.ops, ctx.sha

    async def reserve(sku: str, user: str) -> object:
        call = ops.reserve(sku, user, 1, None)
        return call.parse(await client.evalsha(sha, len(call.keys), *call.keys, *call.args))

    try:
        yield reserve
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _coredis(ctx: Context) -> AsyncIterator[Reserve]:
    import coredis
    from coredis.exceptions import ClusterDownError
    from coredis.retry import ConstantRetryPolicy

    node = ctx.cluster.nodes[0]
    client = coredis.RedisCluster(
        "127.0.0.1",
        node.port,
        decode_responses=True,
        max_connections=64,
        retry_policy=ConstantRetryPolicy((ClusterDownError,), retries=2, delay=0.1),
    )
    ops, sha = ctx.ops, ctx.sha

    async def reserve(sku: str, user: str) -> object:
        call = ops.reserve(sku, user, 1, None)
        return call.parse(await client.evalsha(sha, keys=call.keys, args=call.args))

    async with client:
        yield reserve


@contextlib.asynccontextmanager
async def _glide(ctx: Context) -> AsyncIterator[Reserve]:
    from glide import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress, Script

    config = GlideClusterClientConfiguration(
        [NodeAddress("127.0.0.1", ctx.cluster.nodes[0].port)], request_timeout=5000
    )
    client = await GlideClusterClient.create(config)
    script = Script(ctx.source)
    ops = ctx.ops

    async def reserve(sku: str, user: str) -> object:
        call = ops.reserve(sku, user, 1, None)
        reply: Any = await client.invoke_script(script, list(call.keys), [str(a) for a in call.args])
        return call.parse(reply.decode())

    try:
        yield reserve
    finally:
        await client.close()


CANDIDATES: dict[str, tuple[Factory, str | None]] = {
    "flashsale": (_flashsale, None),
    "flashsale, one node": (_flashsale_one_node, None),
    "redis-py": (_redis_py, None),
    "coredis": (_coredis, "coredis"),
    "valkey-glide": (_glide, "glide"),
}


# -- the runs ----------------------------------------------------------------------------------------------


def _cpu(cluster: RedisCluster) -> list[float]:
    return [redis_cpu_seconds(node.url) for node in cluster.masters]


def _skus(ctx: Context, s: Settings, prefix: str, one_node: bool) -> list[str]:
    """SKU ids; for the one-node candidate only SKUs whose slot the first master serves."""
    low, high = 0, 16383
    if one_node:
        owners = ctx.cluster._slot_owners(ctx.cluster.nodes[0])
        low, high = next(r for r, port in owners.items() if port == ctx.cluster.nodes[0].port)
    skus: list[str] = []
    n = 0
    while len(skus) < s.skus:
        sku = f"{prefix}-{n}"
        n += 1
        if low <= key_slot(ctx.ops.keys.for_sku(sku).tag.encode()) <= high:
            skus.append(sku)
    return skus


async def _measure(name: str, ctx: Context, s: Settings, admin: Engine, report: Report) -> dict[str, Any]:
    factory, _ = CANDIDATES[name]
    rounds = []
    async with factory(ctx) as reserve:
        for r in range(s.rounds):
            skus = _skus(ctx, s, f"cmp-{name.replace(' ', '').replace(',', '')}-{r}", name.endswith("node"))
            for sku in skus:
                admin.load_sale(
                    SaleSettings(sku=sku, total=1_000_000, per_user_limit=1, reservation_ttl_ms=3_600_000)
                )
            await drive(
                s.clients, 2 * s.clients, lambda i, skus=skus: reserve(skus[i], f"w{i}"), max_seconds=10
            )
            before = _cpu(ctx.cluster)
            result = await drive(
                s.clients,
                s.attempts,
                lambda i, skus=skus, r=r: reserve(skus[i % len(skus)], f"u{r}-{i}"),
                max_seconds=s.max_seconds,
            )
            redis_cpu = [after - b for after, b in zip(_cpu(ctx.cluster), before, strict=True)]
            report.check(
                f"{name}, round {r + 1}: every call reserved",
                result.outcomes.keys() <= {"ok"},
                str(dict(result.outcomes)),
            )
            rounds.append(
                {
                    **result.as_dict(),
                    "client_us_per_call": round(result.client_cpu_s * 1e6 / max(result.attempts, 1), 1),
                    "redis_us_per_call": round(sum(redis_cpu) * 1e6 / max(result.attempts, 1), 1),
                    "redis_cpu_s_per_node": [round(c, 2) for c in redis_cpu],
                }
            )
    best = min(rounds, key=lambda x: x["client_us_per_call"])
    return {"rounds": rounds, "best": best}


def _kill_connections(cluster: RedisCluster, stop: threading.Event, kills: list[int]) -> None:
    admins = [node.client() for node in cluster.masters]
    try:
        while not stop.is_set():
            for admin in admins:
                with contextlib.suppress(redis.RedisError):
                    kills.append(int(admin.client_kill_filter(_type="normal", skipme=True)))
            time.sleep(0.02)
    finally:
        for admin in admins:
            admin.close()


async def _probe(name: str, ctx: Context, s: Settings, admin: Engine) -> dict[str, Any]:
    """Reserves while every client connection is killed every 20 ms: did any script run twice?"""
    sku = f"probe-{name.replace(' ', '').replace(',', '')}"
    admin.load_sale(SaleSettings(sku=sku, total=1_000_000, per_user_limit=1000, reservation_ttl_ms=3_600_000))
    factory, _ = CANDIDATES[name]
    acknowledged = 0
    errors: Counter[str] = Counter()
    stop, kills = threading.Event(), []
    async with factory(ctx) as reserve:

        async def shopper(i: int) -> None:
            nonlocal acknowledged
            try:
                await asyncio.wait_for(reserve(sku, f"p{i}"), 10)
                acknowledged += 1
            except Exception as error:  # every failure is an outcome here
                errors[type(error).__name__] += 1

        killer = threading.Thread(target=_kill_connections, args=(ctx.cluster, stop, kills))
        killer.start()
        try:
            for wave in range(s.probe_attempts // 500):
                await asyncio.gather(*(shopper(wave * 500 + i) for i in range(500)))
        finally:
            stop.set()
            killer.join()
    p = admin.keys.for_sku(sku)
    holders = Counter(
        e.user for e in admin.read_events(p.index) if e.type == "reserved" and e.sku == sku and e.user
    )
    twice = sum(1 for n in holders.values() if n > 1)
    return {
        "calls": s.probe_attempts,
        "acknowledged": acknowledged,
        "failed": dict(errors),
        "connections_killed": sum(kills),
        "reservations_in_redis": admin.get_sale(sku).reserved,
        "users_with_two_holds": twice,
    }


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("cluster-clients", asdict(s))
    available = {
        name: module is None or importlib.util.find_spec(module) is not None
        for name, (_, module) in CANDIDATES.items()
    }
    for name, ok in available.items():
        if not ok:
            report.notes.append(f"{name} not installed: not measured (pip install valkey-glide coredis)")
    config = EngineConfig()
    ops = Operations(config)
    script = load_scripts()["reserve"]
    with RedisCluster(s.masters) as cluster:
        report.servers["redis"] = f"cluster of {s.masters} masters"
        ctx = Context(cluster, config, ops, script.sha, script.source)
        admin = Engine.from_url(cluster.url, config, cluster=True, max_connections=8)
        admin.load_scripts()
        figures: dict[str, Any] = {}
        try:
            for name, ok in available.items():
                if ok:
                    print(f"measuring {name}", flush=True)
                    figures[name] = run(_measure(name, ctx, s, admin, report), s.loop)
            for name, ok in available.items():
                if ok and name != "flashsale, one node":
                    print(f"probing {name}", flush=True)
                    figures[name]["probe"] = run(_probe(name, ctx, s, admin), s.loop)
        finally:
            admin.close()
    report.figures = figures
    _summarise(report, figures, s)
    return report


def _summarise(report: Report, figures: dict[str, Any], s: Settings) -> None:
    rows = []
    for name, f in figures.items():
        b = f["best"]
        rows.append(
            [
                name,
                b["attempts"],
                round(b["attempts_per_s"]),
                b["client_us_per_call"],
                b["redis_us_per_call"],
                b["latency"]["p50_ms"],
                b["latency"]["p99_ms"],
            ]
        )
    report.table(
        f"Reserve (full work) over {s.skus:,} SKUs on {s.masters} masters, {s.clients:,} asyncio clients "
        f"(best of {s.rounds} rounds by client CPU)",
        ["client", "calls", "calls/s", "client µs/call", "redis µs/call (all masters)", "p50 ms", "p99 ms"],
        rows,
    )
    probe_rows = [
        [
            name,
            p["calls"],
            p["acknowledged"],
            sum(p["failed"].values()),
            p["reservations_in_redis"],
            p["users_with_two_holds"],
            ", ".join(f"{k} {v}" for k, v in sorted(p["failed"].items())),
        ]
        for name, f in figures.items()
        if (p := f.get("probe"))
    ]
    report.table(
        "Guarantee probe: every client connection killed every 20 ms, each call a distinct user",
        ["client", "calls", "acknowledged", "failed", "holds in Redis", "users with two holds", "errors"],
        probe_rows,
    )
    for name, f in figures.items():
        p = f.get("probe")
        if p is not None:
            report.check(
                f"{name}: no script ran twice under killed connections (observed)",
                p["users_with_two_holds"] == 0,
                f"{p['users_with_two_holds']} users with two holds",
            )
    if "flashsale" in figures:
        ours = figures["flashsale"]["best"]["client_us_per_call"]
        for name, f in figures.items():
            if name != "flashsale":
                report.ratio(f"{name} / flashsale client µs per call", f["best"]["client_us_per_call"], ours)
    report.notes.append(
        "On 2 shared cores the client process and three redis-servers compete for CPU: compare client "
        "µs/call (CPU time of the whole client process, Rust threads included, per call), not calls/s."
    )
