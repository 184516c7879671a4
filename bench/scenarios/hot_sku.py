"""Scenarios 1 and 2: one hot SKU at engine level, then the ceilings in the same run.

1. N concurrent asyncio clients (10 → 10,000) race for S units of one SKU through ``AsyncEngine.reserve``,
   each attempt a distinct user, many more attempts than units. Checks: exactly S succeed, every other
   attempt is OUT_OF_STOCK, invariant 1 holds and the stream's events replay to the SKU's counters.
2. Ceilings: the no-op script through the same client (what one EVALSHA costs through it), the real
   reserve script through the same client on a SKU with stock enough for every call (full work each time),
   and ``redis-benchmark`` running that same reserve script and the no-op by EVALSHA, pipelined — the
   server's own ceiling for this work, with no Python in the way.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from flashsale.bench import ceilings, plots
from flashsale.bench.checks import invariant_1, replayed_counters, sku_counters
from flashsale.bench.load import LoadResult, async_engine, drive, run, warm_up
from flashsale.bench.options import Options
from flashsale.bench.report import LOAD_COLUMNS, Report
from flashsale.bench.servers import redis_version, running
from flashsale.engine import AsyncEngine, SaleSettings


@dataclass
class Settings:
    clients: list[int]
    units: int
    attempts: int
    max_seconds: float
    ceiling_clients: int
    ceiling_attempts: int
    benchmark_requests: int
    benchmark_clients: int
    benchmark_pipeline: int
    max_batch: int
    max_inflight: int
    loop: str
    # Back-to-back rounds of hot-SKU reserve then no-op at ceiling_clients: the ratio's median is what a
    # shared, noisy machine can be trusted with.
    paired_rounds: int = 5
    paired_attempts: int = 50_000

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(
                [10, 1000], 200, 30_000, 8.0, 1000, 30_000, 100_000, 50, 16, 256, 4, options.loop, 2, 20_000
            )
        return cls(
            [10, 100, 1000, 10_000], 1000, 100_000, 20.0, 1000, 100_000, 300_000, 50, 16, 256, 4, options.loop
        )


BIG_STOCK = 100_000_000


def _level_row(result: LoadResult) -> list[Any]:
    lat = result.latencies.summary()
    return [
        result.clients,
        result.attempts,
        result.successes,
        round(result.rate),
        lat["p50_ms"],
        lat["p99_ms"],
        lat["p99_9_ms"],
        round(result.client_us, 1),
        round(result.redis_us, 1),
    ]


# The calls whose cost per call is measured through the same client, in this order.
NOOP, SOLD_OUT, FULL = "no-op", "sold-out refusal", "reserve, full work"
# The same calls with coalescing off (engine/coalescing.py): one reserve.lua call each.
SOLD_OUT_SINGLE = "sold-out refusal, one script call each"
FULL_SINGLE = "reserve, full work, one script call each"
# The storefront sends an Idempotency-Key with every press: its sold-out refusals are keyed (each kept).
KEYED_SOLD_OUT = "sold-out refusal, keyed"
# Issue 14's targets for Redis's CPU per call (µs): a reserve doing its full work, a sold-out refusal.
REDIS_TARGETS_US = {FULL: 12.0, SOLD_OUT: 3.0}


async def call_costs(
    engine: AsyncEngine, url: str, clients: int, attempts: int, max_seconds: float, tag: str
) -> dict[str, LoadResult]:
    """The no-op script, reserve on a sold-out SKU (every call refused OUT_OF_STOCK; then again with an
    idempotency key per call, as the storefront sends) and reserve on a SKU with stock for every call (full
    work each time), one after the other through the same client, each with the client's and Redis's CPU
    time. Each call is a distinct user."""
    noop_sku, sold_out, big = f"noop-{tag}", f"soldout-{tag}", f"stock-{tag}"
    await engine.load_sale(SaleSettings(sku=noop_sku, total=1))
    await engine.load_sale(SaleSettings(sku=sold_out, total=1, reservation_ttl_ms=3_600_000))
    await engine.reserve(sold_out, f"first-{tag}")
    await engine.load_sale(
        SaleSettings(sku=big, total=BIG_STOCK, per_user_limit=1_000_000, reservation_ttl_ms=3_600_000)
    )
    await warm_up(engine, clients, noop_sku)
    # The same client with coalescing off: one reserve.lua call per reserve, as a quiet sale sends them.
    single = AsyncEngine(engine.redis, replace(engine.config, coalesce_reserves=1))
    await engine.buckets_of(sold_out)
    await engine.buckets_of(big)
    await single.buckets_of(sold_out)
    await single.buckets_of(big)
    calls = {
        NOOP: lambda i: engine.noop(noop_sku),
        SOLD_OUT: lambda i: engine.reserve(sold_out, f"s{tag}-{i}"),
        SOLD_OUT_SINGLE: lambda i: single.reserve(sold_out, f"t{tag}-{i}"),
        KEYED_SOLD_OUT: lambda i: engine.reserve(sold_out, f"k{tag}-{i}", idempotency_key=f"press-{i}"),
        FULL: lambda i: engine.reserve(big, f"f{tag}-{i}"),
        FULL_SINGLE: lambda i: single.reserve(big, f"g{tag}-{i}"),
    }
    return {
        name: await drive(clients, attempts, call, max_seconds=max_seconds, redis_url=url)
        for name, call in calls.items()
    }


def check_call_costs(report: Report, costs: dict[str, LoadResult], label: str = "") -> None:
    expected = {
        NOOP: "ok",
        SOLD_OUT: "OUT_OF_STOCK",
        SOLD_OUT_SINGLE: "OUT_OF_STOCK",
        KEYED_SOLD_OUT: "OUT_OF_STOCK",
        FULL: "ok",
        FULL_SINGLE: "ok",
    }
    report.check(
        f"{label}per-call runs: no-op and full reserve all ok, every sold-out call, keyed or not, refused "
        "OUT_OF_STOCK",
        all(set(costs[name].outcomes) == {outcome} for name, outcome in expected.items()),
        "; ".join(f"{name} {dict(costs[name].outcomes)}" for name in expected),
    )


async def _engine_runs(url: str, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    engine = async_engine(url, s.max_batch, s.max_inflight)
    await engine.load_scripts()
    out: dict[str, Any] = {"levels": [], "cdf": {}}
    rows = []
    try:
        for clients in s.clients:
            sku = f"hot-{run_id}-{clients}"
            await engine.load_sale(
                SaleSettings(
                    sku=sku, name="Hot SKU", total=s.units, per_user_limit=1, reservation_ttl_ms=600_000
                )
            )
            await warm_up(engine, clients, sku)
            result = await drive(
                clients,
                s.attempts,
                lambda i, sku=sku: engine.reserve(sku, f"u{i}"),
                max_seconds=s.max_seconds,
                redis_url=url,
            )
            counters = await sku_counters(engine, sku)
            replayed = (await replayed_counters(engine, {sku})).get(sku)
            level = {
                **result.as_dict(),
                "sku": sku,
                "units": s.units,
                "counters": counters,
                "replayed": replayed,
            }
            out["levels"].append(level)
            out["cdf"][str(clients)] = result.latencies.cdf()
            rows.append(_level_row(result))
            label = f"{clients} clients"
            enough = result.attempts >= 2 * s.units
            report.check(
                f"{label}: successes == units",
                enough and result.successes == s.units,
                f"{result.successes} of {s.units} units in {result.attempts} attempts",
            )
            refusals = {k: v for k, v in result.outcomes.items() if k != "ok"}
            report.check(
                f"{label}: every refusal is OUT_OF_STOCK", set(refusals) <= {"OUT_OF_STOCK"}, str(refusals)
            )
            ok, detail = invariant_1(counters)
            report.check(f"{label}: invariant 1", ok and counters["reserved"] == s.units, detail)
            report.check(
                f"{label}: stream replays to the counters", replayed == counters, f"replayed {replayed}"
            )

        # Scenario 2 through the same client: the no-op, a sold-out refusal, the reserve doing its full work.
        costs = await call_costs(engine, url, s.ceiling_clients, s.ceiling_attempts, s.max_seconds, run_id)
        check_call_costs(report, costs)
        out["paired"] = await _paired_rounds(engine, s, run_id, f"noop-{run_id}", report)
        out["client_noop"] = costs[NOOP].as_dict()
        out["client_sold_out"] = costs[SOLD_OUT].as_dict()
        out["client_keyed_sold_out"] = costs[KEYED_SOLD_OUT].as_dict()
        out["client_reserve_full"] = costs[FULL].as_dict()
        out["client_sold_out_single"] = costs[SOLD_OUT_SINGLE].as_dict()
        out["client_reserve_full_single"] = costs[FULL_SINGLE].as_dict()
        coalescer = engine.coalescer
        out["coalesced"] = (
            {"calls": coalescer.calls, "items": coalescer.items, "passed_on": coalescer.passed_on}
            if coalescer
            else None
        )
        out["rows"] = rows
        out.update(benchmark_facts(engine, run_id))
    finally:
        await engine.close()
    return out


async def _paired_rounds(
    engine: AsyncEngine, s: Settings, run_id: str, noop_sku: str, report: Report
) -> list[dict[str, Any]]:
    """Hot-SKU reserve and no-op back to back, round after round, at the same concurrency."""
    rounds = []
    for r in range(s.paired_rounds):
        sku = f"pair-{run_id}-{r}"
        await engine.load_sale(SaleSettings(sku=sku, total=s.units, reservation_ttl_ms=600_000))
        hot = await drive(
            s.ceiling_clients,
            s.paired_attempts,
            lambda i, sku=sku, r=r: engine.reserve(sku, f"p{r}-{i}"),
            max_seconds=s.max_seconds,
        )
        noop = await drive(
            s.ceiling_clients, s.paired_attempts, lambda i: engine.noop(noop_sku), max_seconds=s.max_seconds
        )
        report.check(
            f"paired round {r + 1}: successes == units, refusals OUT_OF_STOCK",
            hot.successes == s.units and set(hot.outcomes) <= {"ok", "OUT_OF_STOCK"},
            str(dict(hot.outcomes)),
        )
        rounds.append(
            {
                "round": r + 1,
                "reserve_per_s": round(hot.rate),
                "noop_per_s": round(noop.rate),
                "ratio": round(hot.rate / noop.rate, 3) if noop.rate else 0.0,
                "reserve_client_us": round(hot.client_cpu_s * 1e6 / max(hot.attempts, 1), 1),
                "noop_client_us": round(noop.client_cpu_s * 1e6 / max(noop.attempts, 1), 1),
            }
        )
    return rounds


def benchmark_facts(engine: AsyncEngine, tag: str) -> dict[str, Any]:
    """What redis-benchmark needs to run the scripts on the SKUs ``call_costs`` made: the reserve script's
    KEYS and ARGV on the big SKU (a fresh user and reservation id per call), the no-op's key, the SHAs."""
    big, noop_sku = f"stock-{tag}", f"noop-{tag}"
    call = engine.ops.reserve(big, "u__rand_int__", 1, None)
    # The one argument that is a reservation id (ARGV[3] of lua/reserve.lua), wherever the layout puts it.
    rid = next(str(a) for a in call.args if engine.keys.for_id(str(a)) is not None)
    return {
        "big_sku": big,
        "big_sku_keys": [k.replace(rid, "rsv_b___rand_int__") for k in call.keys],
        "big_sku_args": [str(a).replace(rid, "rsv_b___rand_int__") for a in call.args],
        "big_sku_open_holds": engine.keys.for_sku(big).open_holds(),
        "reserve_sha": engine.scripts["reserve"].sha,
        "noop_sha": engine.scripts["noop"].sha,
        "noop_key": engine.keys.for_sku(noop_sku).sku(noop_sku),
    }


def server_ceilings(
    options: Options,
    url: str,
    facts: dict[str, Any],
    report: Report,
    *,
    requests: int,
    clients: int,
    pipeline: int,
    unpipelined: int = 0,
    label: str = "",
) -> dict[str, Any]:
    """redis-benchmark running the reserve script (full work) and the no-op (4x the requests) by EVALSHA,
    pipelined, on the SKUs of ``benchmark_facts``: the server's own ceiling with no Python in the way; with
    ``unpipelined`` requests also the no-op one request per round trip (the per-request network cost).
    Empty when not run (a note says why)."""
    binary = ceilings.find_redis_benchmark() if options.redis_benchmark else None
    if not options.redis_benchmark:
        report.notes.append(f"{label}redis-benchmark ceilings skipped (--no-redis-benchmark)")
        return {}
    if binary is None:
        report.notes.append(
            f"redis-benchmark not found, server ceilings not measured: {ceilings.INSTALL_HINT}"
        )
        return {}
    keys, args = facts["big_sku_keys"], facts["big_sku_args"]
    noop = ["EVALSHA", facts["noop_sha"], "1", facts["noop_key"]]
    calls = {
        "redis_benchmark_reserve": (
            ["EVALSHA", facts["reserve_sha"], str(len(keys)), *keys, *args],
            requests,
            pipeline,
        ),
        "redis_benchmark_noop": (noop, requests * 4, pipeline),
    }
    if unpipelined:
        calls["redis_benchmark_noop_unpipelined"] = (noop, unpipelined, 1)
    # Each call must be a new hold of a new user, the full work it claims: the ids are random, so the
    # partition's open holds grow by the calls, less the few ids drawn twice in 10^9 (keyspace above
    # 2^31 made redis-benchmark repeat one id and one user for every call: caught here).
    client = redis.Redis.from_url(url, decode_responses=True)
    open_holds = facts["big_sku_open_holds"]
    before = int(client.hlen(open_holds))
    try:
        figures = {
            name: ceilings.redis_benchmark(binary, url, command, requests=n, clients=clients, pipeline=depth)
            for name, (command, n, depth) in calls.items()
        }
        made = int(client.hlen(open_holds)) - before
    except RuntimeError as error:  # the engine figures stand; say why the ceiling is missing
        report.notes.append(f"{label}redis-benchmark ceilings not measured: {error}")
        return {}
    finally:
        client.close()
    report.check(
        f"{label}redis-benchmark's reserves made a new hold each (99 % at least)",
        made >= 0.99 * requests,
        f"{made} new holds from {requests} calls",
    )
    return figures


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("hot-sku", asdict(s))
    with running(options.redis_url, server=options.server) as servers:
        report.servers["redis"] = redis_version(servers.redis_url)
        figures = run(_engine_runs(servers.redis_url, s, options.run_id, report), s.loop)
        figures.update(
            server_ceilings(
                options,
                servers.redis_url,
                figures,
                report,
                requests=s.benchmark_requests,
                clients=s.benchmark_clients,
                pipeline=s.benchmark_pipeline,
            )
        )
    report.figures = figures
    _summarise(report, figures, s)
    if options.plots:
        report.plots += plots.hot_sku(figures, options.results_dir)
    return report


def _target_cell(name: str, us: float) -> str:
    target = REDIS_TARGETS_US.get(name)
    if target is None:
        return ""
    return f"≤ {target:g} {'✅' if us <= target else '❌'}"


def _summarise(report: Report, f: dict[str, Any], s: Settings) -> None:
    levels = f["levels"]
    best = max(levels, key=lambda level: level["attempts_per_s"])
    noop = f["client_noop"]["attempts_per_s"]
    full = f["client_reserve_full"]["attempts_per_s"]
    report.table(
        f"Hot SKU: {s.units:,} units, up to {s.attempts:,} attempts per level (each a distinct user)",
        [*LOAD_COLUMNS, "p99.9 ms", "client µs/call", "redis µs/call"],
        f["rows"],
    )
    rows = [
        [
            "hot SKU reserve (best level, mostly OUT_OF_STOCK)",
            f"engine, {best['clients']} clients",
            round(best["attempts_per_s"]),
            best["latency"]["p99_ms"],
        ],
        [
            "no-op script",
            f"engine, {s.ceiling_clients} clients",
            round(noop),
            f["client_noop"]["latency"]["p99_ms"],
        ],
        [
            "reserve, full work every call",
            f"engine, {s.ceiling_clients} clients",
            round(full),
            f["client_reserve_full"]["latency"]["p99_ms"],
        ],
    ]
    rb = f.get("redis_benchmark_reserve")
    rb_noop = f.get("redis_benchmark_noop")
    if rb and rb_noop:
        rows += [
            [
                "reserve, full work every call",
                f"redis-benchmark -c {rb['clients']} -P {rb['pipeline']}",
                round(rb["rate_per_s"]),
                rb["p99_ms"],
            ],
            [
                "no-op script",
                f"redis-benchmark -c {rb_noop['clients']} -P {rb_noop['pipeline']}",
                round(rb_noop["rate_per_s"]),
                rb_noop["p99_ms"],
            ],
        ]
    report.table("Ceilings, same run, same server", ["what", "through", "calls/s", "p99 ms"], rows)
    hot = best["attempts_per_s"]
    paired = f["paired"]
    report.table(
        f"Paired rounds at {s.ceiling_clients:,} clients: hot-SKU reserve ({s.units:,} units), then no-op",
        ["round", "reserve/s", "no-op/s", "ratio", "reserve client µs/call", "no-op client µs/call"],
        [
            [
                p["round"],
                p["reserve_per_s"],
                p["noop_per_s"],
                p["ratio"],
                p["reserve_client_us"],
                p["noop_client_us"],
            ]
            for p in paired
        ],
    )
    per_call = {
        f"hot SKU reserve ({best['clients']} clients, mostly OUT_OF_STOCK)": best,
        NOOP: f["client_noop"],
        SOLD_OUT: f["client_sold_out"],
        KEYED_SOLD_OUT: f["client_keyed_sold_out"],
        FULL: f["client_reserve_full"],
    }
    # Results from before coalescing have no single-call rows.
    if "client_sold_out_single" in f:
        per_call[SOLD_OUT_SINGLE] = f["client_sold_out_single"]
        per_call[FULL_SINGLE] = f["client_reserve_full_single"]
    report.table(
        f"What one call costs (CPU microseconds per call, same run, {s.ceiling_clients:,} clients "
        "for all but the first): what limits each rate",
        ["call", "calls/s", "client µs/call", "redis µs/call", "sum µs/call", "redis target µs/call"],
        [
            [
                name,
                round(x["attempts_per_s"]),
                x["client_us_per_call"],
                x["redis_us_per_call"],
                round(x["client_us_per_call"] + x["redis_us_per_call"], 1),
                _target_cell(name, x["redis_us_per_call"]),
            ]
            for name, x in per_call.items()
        ]
        + [
            [
                f"{name} (redis-benchmark, no Python)",
                round(x["rate_per_s"]),
                "—",
                x["redis_us_per_call"],
                "—",
                "",
            ]
            for name, x in ((FULL, rb), (NOOP, rb_noop))
            if x
        ],
    )
    coalesced = f.get("coalesced")
    if coalesced and coalesced["calls"]:
        report.notes.append(
            "The engine coalesces the plain reserves it has for one SKU at the same moment into one "
            "reserve_many.lua call (engine/coalescing.py): in this run "
            f"{coalesced['calls']:,} such calls carried {coalesced['items']:,} reserves "
            f"({coalesced['items'] / coalesced['calls']:.1f} each), {coalesced['passed_on']:,} of them"
            " passed on to reserve.lua. The rows 'one script call each'"
            " are the same calls with coalescing off."
        )
    for name, target in REDIS_TARGETS_US.items():
        us = per_call[name]["redis_us_per_call"]
        report.ratio(
            f"Redis CPU µs per {name} / {target:g} µs target (issue 14)", us, target, "≤ 1", us <= target
        )
    report.notes.append(
        "On 2 cores the client process and Redis each get at most one: a rate is capped by 1e6 / the larger "
        "of the two µs/call figures, and by 2e6 / their sum. The no-op costs Redis almost nothing and the "
        "client about a third of a reserve, so reserve/no-op through the same client is bounded by the "
        "reserve's own client work (key names, id, arguments, reply or refusal decoding) and Redis's work "
        "for the script, not by round trips (auto-pipelining removed those)."
    )
    median = statistics.median(p["ratio"] for p in paired) if paired else 0.0
    report.ratio(
        f"hot-SKU reserve / no-op, same client, median of {len(paired)} paired rounds (issue 2)",
        median,
        1.0,
        "≥ 0.5",
        median >= 0.5,
    )
    report.ratio("hot-SKU reserve (best level) / no-op (separate runs)", hot, noop)
    if rb and rb_noop:
        report.ratio(
            "engine reserve (full work) / redis-benchmark reserve, same script (issue 6)",
            full,
            rb["rate_per_s"],
            "≥ 0.6",
            full / rb["rate_per_s"] >= 0.6,
        )
        report.ratio("engine hot-SKU attempts / redis-benchmark reserve (full work)", hot, rb["rate_per_s"])
        report.ratio("engine no-op / redis-benchmark no-op", noop, rb_noop["rate_per_s"])
    report.ratio("engine reserve (full work) / engine no-op", full, noop)
