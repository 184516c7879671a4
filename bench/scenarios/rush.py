"""Scenario: the sale-start rush, with and without a waiting room, and what joining and the rate limit cost.

1. Redis cost, side by side in one run (alternating rounds of calls through ``AsyncEngine``): the
   Redis time per call (INFO commandstats) and Redis CPU per call (INFO cpu) of a join, a position read,
   a reserve of a sale without a waiting room (before the change's extra argument, and as it is now), a
   reserve with an admission, and a reserve with the per-user rate checked in the script; then the
   ``limits`` library's Redis-backed windows (fixed, moving, sliding) doing the same per-user check.
2. HTTP: ``shoppers`` arrive within one second (0 → peak), through ``flashsale serve --workers 2`` with
   ``flashsale worker`` (the admitter) running. Without a waiting room each reserves at once and pays if it
   got a hold. With one, each joins, polls its place at the interval the API suggests, reserves once
   admitted and pays. Figures: 5xx (must be 0), joins/s, time to first admission, p99 of join and reserve,
   units sold (must equal the stock, read from Redis). Load generator: aiohttp, connections capped like a
   load balancer would (the API answers 503 beyond its per-process cap).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import numpy as np
import redis
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.scenarios.http import _cpu_seconds, _serve
from flashsale.bench.servers import redis_version
from flashsale.bench.stack import write_behind_stack
from flashsale.engine import AsyncEngine, Engine, SaleSettings
from flashsale.engine.models import WaitingRoom
from flashsale.engine.operations import RateLimit

from flashsale.commands.token import mint


@dataclass
class Settings:
    shoppers: int
    units: int
    admit_per_s: int
    connections: int
    server_workers: int
    calls_per_round: int
    rounds: int

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(3_000, 200, 2_000, 500, 2, 2_000, 2)
        return cls(50_000, 500, 2_000, 1_000, 2, 10_000, 4)


# -- 1. Redis cost per call ---------------------------------------------------------------------------------
def _server_figures(client: redis.Redis) -> tuple[int, float, float]:
    """(commands processed, µs spent inside commands, CPU seconds) of the whole server so far."""
    stats = client.info("commandstats")
    calls = sum(int(v["calls"]) for v in stats.values())
    usec = sum(float(v["usec"]) for v in stats.values())
    cpu = client.info("cpu")
    return calls, usec, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _measure(client: redis.Redis, n: int, call: Any) -> tuple[float, float, float]:
    """Runs ``call(i)`` n times, 500 at a time; per call: Redis µs in commands, Redis and client CPU µs."""
    before, cpu_before = _server_figures(client), time.process_time()
    for start in range(0, n, 500):
        await asyncio.gather(*(call(i) for i in range(start, min(n, start + 500))), return_exceptions=True)
    after, cpu_after = _server_figures(client), time.process_time()
    return (
        (after[1] - before[1]) / n,
        (after[2] - before[2]) * 1e6 / n,
        (cpu_after - cpu_before) * 1e6 / n,
    )


async def _redis_costs(url: str, s: Settings, run_id: str) -> dict[str, dict[str, float]]:
    import limits
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        SlidingWindowCounterRateLimiter,
    )

    engine = AsyncEngine.from_url(url)
    await engine.load_scripts()
    client = redis.Redis.from_url(url)
    plain, room, rated = f"cost-plain-{run_id}", f"cost-room-{run_id}", f"cost-rated-{run_id}"
    big = 100_000_000
    for sku in (plain, room, rated):
        await engine.load_sale(
            SaleSettings(sku=sku, total=big, per_user_limit=1, reservation_ttl_ms=3_600_000)
        )
    await engine.set_waiting_room(room, WaitingRoom(admit_per_s=50_000, admission_ttl_ms=3_600_000))
    lease = engine.keys.for_sku(room).admitter_lease(room)
    client.set(lease, "bench")
    rate = RateLimit(per_s=1000, burst=1000)
    item = limits.parse("1000/second")
    storage = RedisStorage(f"async+{url}", implementation="redispy")
    strategies = {
        "limits fixed window (Redis)": FixedWindowRateLimiter(storage),
        "limits moving window (Redis)": MovingWindowRateLimiter(storage),
        "limits sliding window counter (Redis)": SlidingWindowCounterRateLimiter(storage),
    }
    rounds: dict[str, list[tuple[float, float, float]]] = {}
    n = s.calls_per_round
    for r in range(s.rounds):
        tag = f"{run_id}-{r}"
        joined = [f"j{tag}-{i}" for i in range(n)]

        async def join(i: int, users: list[str] = joined) -> Any:
            return await engine.join_queue(room, users[i])

        async def position(i: int, users: list[str] = joined) -> Any:
            return await engine.queue_status(room, users[i])

        async def reserve_plain(i: int, tag: str = tag) -> Any:
            return await engine.reserve(plain, f"p{tag}-{i}")

        async def reserve_rated(i: int, tag: str = tag) -> Any:
            return await engine.reserve(rated, f"r{tag}-{i}", rate=rate)

        async def reserve_admitted(i: int, users: list[str] = joined) -> Any:
            return await engine.reserve(room, users[i])

        measured = {
            "join the line (queue_join)": await _measure(client, n, join),
            "reserve, sale without a waiting room": await _measure(client, n, reserve_plain),
            "read the place (queue_status)": await _measure(client, n, position),
            "reserve with the rate folded into the script": await _measure(client, n, reserve_rated),
        }
        while (await engine.admit(room, "bench", 5_000)).admitted:
            pass
        measured["reserve with an admission (waiting room)"] = await _measure(client, n, reserve_admitted)
        for name, strategy in strategies.items():

            async def check(i: int, strategy: Any = strategy, tag: str = tag) -> Any:
                return await strategy.hit(item, f"{tag}-{i}")

            measured[name] = await _measure(client, n, check)
        for name, figures in measured.items():
            rounds.setdefault(name, []).append(figures)
    await engine.close()
    client.close()
    return {
        name: {
            "redis_us_in_commands": round(sum(f[0] for f in got) / len(got), 2),
            "redis_cpu_us": round(sum(f[1] for f in got) / len(got), 2),
            "client_cpu_us": round(sum(f[2] for f in got) / len(got), 2),
        }
        for name, got in rounds.items()
    }


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


# -- 2. the HTTP rush ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    statuses: Counter[int]
    join_ms: list[float]
    reserve_ms: list[float]
    joins_done: list[float]  # monotonic times joins were answered
    holds: int = 0
    paid: int = 0


async def _shopper(
    session: aiohttp.ClientSession, url: str, token: str, sku: str, delay: float, waiting: bool, out: Outcome
) -> None:
    await asyncio.sleep(delay)
    headers = {"Authorization": f"Bearer {token}"}

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with session.request(method, url + path, json=body, headers=headers) as answer:
            data = await answer.json(content_type=None)
            out.statuses[answer.status] += 1
            return answer.status, data

    if waiting:
        started = time.perf_counter()
        status, place = await call("POST", f"/api/v1/sales/{sku}/queue")
        out.join_ms.append((time.perf_counter() - started) * 1000)
        out.joins_done.append(time.monotonic())
        while status == 200 and place["status"] == "WAITING":
            await asyncio.sleep(place["pollAfterSeconds"])
            status, place = await call("GET", f"/api/v1/sales/{sku}/queue")
        if status != 200 or place["status"] != "ADMITTED":
            return
    started = time.perf_counter()
    status, hold = await call("POST", "/api/v1/reservations", {"skuId": sku})
    out.reserve_ms.append((time.perf_counter() - started) * 1000)
    if status != 201:
        return
    out.holds += 1
    status, _ = await call(
        "POST", "/api/v1/orders/checkout", {"reservationId": hold["id"], "paymentMethod": "CREDIT_CARD"}
    )
    if status == 201:
        out.paid += 1


async def _rush(url: str, tokens: list[str], sku: str, waiting: bool, s: Settings) -> Outcome:
    out = Outcome(Counter(), [], [], [])
    connector = aiohttp.TCPConnector(limit=s.connections)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        n = len(tokens)
        await asyncio.gather(
            *(_shopper(session, url, tokens[i], sku, i / n, waiting, out) for i in range(n)),
            return_exceptions=False,
        )
    return out


def _http_rush(stack_settings: Any, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    url_redis = str(stack_settings.redis_url)
    settings = stack_settings
    engine = Engine.from_url(url_redis, settings.engine_config())
    engine.load_scripts()
    tokens = [mint(settings, f"rush-{run_id}-{i}", ttl_s=3600) for i in range(s.shoppers)]
    with _serve(settings, s.server_workers) as (url, server):
        for mode in ("without waiting room", "with waiting room"):
            figures[mode] = _one_rush(engine, url, server.pid, tokens, mode, s, run_id)
            f = figures[mode]
            report.check(f"{mode}: no 5xx", f["5xx"] == 0, f"statuses {f['statuses']}")
            report.check(
                f"{mode}: exactly the units sold (Redis)",
                f["sold_in_redis"] == s.units == f["paid"] and f["available"] == 0 and f["reserved"] == 0,
                f"sold {f['sold_in_redis']} of {s.units}, paid {f['paid']}, available {f['available']}, "
                f"reserved {f['reserved']}",
            )
    engine.close()
    return figures


def _one_rush(
    engine: Engine, url: str, server_pid: int, tokens: list[str], mode: str, s: Settings, run_id: str
) -> dict[str, Any]:
    waiting = mode.startswith("with ")
    sku = f"rush-{'room' if waiting else 'plain'}-{run_id}"
    seconds, micros = engine.redis.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    # The sale opens half way through the arrivals: half the crowd joins early (random places); without a
    # waiting room it opens as they start to arrive.
    engine.load_sale(
        SaleSettings(
            sku=sku, name=sku, total=s.units, per_user_limit=1, starts_at=now + (1_500 if waiting else 1_000),
            reservation_ttl_ms=600_000,
        )
    )  # fmt: skip
    if waiting:
        engine.set_waiting_room(sku, WaitingRoom(admit_per_s=s.admit_per_s, admission_ttl_ms=60_000))
    time.sleep(max(0.0, (now + 1_000) / 1000 - time.time()))  # the worker finds the room meanwhile
    server_cpu, redis_cpu, client_cpu = _cpu_seconds(server_pid), _redis_cpu(engine), os.times()
    started = time.monotonic()
    out = asyncio.run(_rush(url, tokens, sku, waiting, s))
    elapsed = time.monotonic() - started
    server_cpu = _cpu_seconds(server_pid) - server_cpu
    redis_cpu = _redis_cpu(engine) - redis_cpu
    client_cpu_s = (os.times().user - client_cpu.user) + (os.times().system - client_cpu.system)
    sale = engine.get_sale(sku)
    room = engine.redis.hgetall(engine.keys.for_sku(sku).waiting_room(sku)) if waiting else {}
    joins = sorted(out.joins_done)
    first_admission = int(room["first_admitted_at"]) - sale.starts_at if "first_admitted_at" in room else None
    return {
        "shoppers": s.shoppers,
        "seconds": round(elapsed, 2),
        "requests": sum(out.statuses.values()),
        "statuses": {str(k): v for k, v in sorted(out.statuses.items())},
        "5xx": sum(v for k, v in out.statuses.items() if k >= 500),
        "joins_per_s": round(len(joins) / max(joins[-1] - joins[0], 1e-3)) if len(joins) > 1 else None,
        "join_ms": {"p50": percentile(out.join_ms, 50), "p99": percentile(out.join_ms, 99)}
        if out.join_ms
        else None,
        "reserve_ms": {"p50": percentile(out.reserve_ms, 50), "p99": percentile(out.reserve_ms, 99)},
        "reserve_attempts": len(out.reserve_ms),
        "first_admission_after_start_ms": first_admission,
        "sent_away_sold_out": int(room.get("sent_away", 0)),
        "holds": out.holds,
        "paid": out.paid,
        "sold_in_redis": sale.sold,
        "available": sale.available,
        "reserved": sale.reserved,
        "api_cores": round(server_cpu / elapsed, 2),
        "redis_cores": round(redis_cpu / elapsed, 2),
        "client_cores": round(client_cpu_s / elapsed, 2),
    }


def _redis_cpu(engine: Engine) -> float:
    cpu = engine.redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("rush", asdict(s))
    run_id = options.run_id
    with write_behind_stack(
        options.redis_url, options.database_url, None, jwt_secret=secrets.token_hex(32)
    ) as stack:
        report.servers["redis"] = redis_version(str(stack.settings.redis_url))
        costs = asyncio.run(_redis_costs(str(stack.settings.redis_url), s, run_id))
        with stack.worker():
            rush = _http_rush(stack.settings, s, run_id, report)
    report.figures = {"redis_cost_per_call": costs, "rush": rush}
    join, reserve = costs["join the line (queue_join)"], costs["reserve, sale without a waiting room"]
    report.ratio(
        "Redis µs in commands: join / reserve (side by side)",
        join["redis_us_in_commands"],
        reserve["redis_us_in_commands"],
        "≤ 1",
        join["redis_us_in_commands"] <= reserve["redis_us_in_commands"],
    )
    report.table(
        "Cost per call, side by side (alternating rounds; µs)",
        ["call", "Redis µs in commands", "Redis CPU µs", "client CPU µs"],
        [
            [name, c["redis_us_in_commands"], c["redis_cpu_us"], c["client_cpu_us"]]
            for name, c in costs.items()
        ],
    )
    report.table(
        f"The rush over HTTP: {s.shoppers:,} shoppers arriving within 1 s, {s.units} units",
        [
            "mode",
            "seconds",
            "requests",
            "5xx",
            "joins/s",
            "join p99 ms",
            "reserve p99 ms",
            "1st admission after start ms",
            "sold",
            "API cores",
            "Redis cores",
            "client cores",
        ],
        [
            [
                mode,
                f["seconds"],
                f["requests"],
                f["5xx"],
                f["joins_per_s"] or "-",
                f["join_ms"]["p99"] if f["join_ms"] else "-",
                f["reserve_ms"]["p99"],
                f["first_admission_after_start_ms"]
                if f["first_admission_after_start_ms"] is not None
                else "-",
                f["sold_in_redis"],
                f["api_cores"],
                f["redis_cores"],
                f["client_cores"],
            ]
            for mode, f in rush.items()
        ],
    )
    report.notes.append(
        "Redis µs in commands: INFO commandstats' usec (time inside commands: the scripts' own work); "
        "Redis CPU µs: INFO cpu, network reads and writes included. Rounds alternate so both sides see the "
        "same machine."
    )
    report.notes.append(
        "2 shared cores: the load generator (aiohttp, Python), two API processes, the worker, Redis, "
        "PostgreSQL and the broker all run on them, so the HTTP figures say where the rush queues, not the "
        "product's ceiling."
    )
    return report
