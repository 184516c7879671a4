"""Scenario 4: many SKUs at once — 1,000 SKUs, traffic spread uniformly, then Zipf-skewed.

Every attempt is a distinct user reserving one unit of a SKU drawn from the distribution (seeded, so runs
are repeatable). Because users never repeat, each SKU must end with exactly min(units, attempts on it)
reservations: the check compares every SKU's counters with that, and checks invariant 1 for all of them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from flashsale.bench import plots
from flashsale.bench.checks import invariant_1, sku_counters
from flashsale.bench.load import async_engine, drive, run, warm_up
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_version, running
from flashsale.engine import AsyncEngine, SaleSettings


@dataclass
class Settings:
    skus: int
    units: int
    clients: int
    attempts: int
    max_seconds: float
    zipf_exponent: float
    seed: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(1000, 10, 1000, 30_000, 10.0, 1.1, 7, options.loop)
        return cls(1000, 50, 1000, 200_000, 30.0, 1.1, 7, options.loop)


def draws(s: Settings, distribution: str) -> np.ndarray:
    """The SKU index of every attempt."""
    rng = np.random.default_rng(s.seed)
    if distribution == "uniform":
        return rng.integers(0, s.skus, size=s.attempts)
    ranks = np.arange(1, s.skus + 1, dtype=np.float64)
    weights = ranks**-s.zipf_exponent
    return rng.choice(s.skus, size=s.attempts, p=weights / weights.sum())


async def _one(
    engine: AsyncEngine, url: str, s: Settings, run_id: str, distribution: str, report: Report
) -> dict[str, Any]:
    skus = [f"many-{run_id}-{distribution}-{i}" for i in range(s.skus)]
    await asyncio.gather(*(engine.load_sale(SaleSettings(sku=sku, total=s.units)) for sku in skus))
    picks = draws(s, distribution)
    await warm_up(engine, s.clients, skus[0])
    result = await drive(
        s.clients,
        s.attempts,
        lambda i: engine.reserve(skus[picks[i]], f"u{i}"),
        max_seconds=s.max_seconds,
        redis_url=url,
    )
    attempted = Counter(picks[: result.attempts].tolist())
    expected = {i: min(s.units, attempted.get(i, 0)) for i in range(s.skus)}
    counters = await asyncio.gather(*(sku_counters(engine, sku) for sku in skus))
    wrong = [
        (skus[i], c["reserved"], expected[i]) for i, c in enumerate(counters) if c["reserved"] != expected[i]
    ]
    broken = [(skus[i], invariant_1(c)[1]) for i, c in enumerate(counters) if not invariant_1(c)[0]]
    refusals = {k: v for k, v in result.outcomes.items() if k != "ok"}
    report.check(
        f"{distribution}: successes == sum of min(units, attempts) per SKU",
        result.successes == sum(expected.values()) and not wrong,
        f"{result.successes} successes, expected {sum(expected.values())}; wrong SKUs: {wrong[:3]}",
    )
    report.check(f"{distribution}: invariant 1 on all {s.skus} SKUs", not broken, str(broken[:3]))
    report.check(
        f"{distribution}: every refusal is OUT_OF_STOCK", set(refusals) <= {"OUT_OF_STOCK"}, str(refusals)
    )
    top = attempted.most_common(1)[0][1] if attempted else 0
    sold_out = sum(1 for i in range(s.skus) if expected[i] == s.units)
    return {
        **result.as_dict(),
        "distribution": distribution,
        "top_sku_share": round(top / max(result.attempts, 1), 4),
        "skus_sold_out": sold_out,
        "cdf": result.latencies.cdf(),
    }


async def _runs(url: str, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    engine = async_engine(url)
    await engine.load_scripts()
    try:
        return {d: await _one(engine, url, s, run_id, d, report) for d in ("uniform", "zipf")}
    finally:
        await engine.close()


def run_scenario(options: Options) -> Report:
    if options.redis_cluster:
        from flashsale.bench.scenarios import many_skus_cluster

        return many_skus_cluster.run_scenario(options)
    s = Settings.for_run(options)
    report = Report("many-skus", asdict(s))
    with running(options.redis_url, server=options.server) as servers:
        report.servers["redis"] = redis_version(servers.redis_url)
        figures = run(_runs(servers.redis_url, s, options.run_id, report), s.loop)
    report.figures = figures
    rows = []
    for name, f in figures.items():
        lat = f["latency"]
        rows.append(
            [
                name,
                f["attempts"],
                f["outcomes"].get("ok", 0),
                f["skus_sold_out"],
                f"{f['top_sku_share']:.1%}",
                round(f["attempts_per_s"]),
                lat["p50_ms"],
                lat["p99_ms"],
                lat["p99_9_ms"],
                round(f["client_us_per_call"], 1),
                round(f["redis_us_per_call"], 1),
            ]
        )
    report.table(
        f"{s.skus:,} SKUs × {s.units} units, {s.clients:,} clients, each attempt a distinct user",
        [
            "traffic",
            "attempts",
            "successes",
            "SKUs sold out",
            "busiest SKU's share",
            "attempts/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "client µs/call",
            "redis µs/call",
        ],
        rows,
    )
    report.ratio(
        "Zipf / uniform throughput", figures["zipf"]["attempts_per_s"], figures["uniform"]["attempts_per_s"]
    )
    if options.plots:
        report.plots.append(
            plots.latency_cdf(
                {f"flashsale, {name} traffic": f["cdf"] for name, f in figures.items()},
                f"Reserve latency over {s.skus:,} SKUs",
                options.results_dir,
                "many-skus-latency-cdf.png",
            )
        )
    return report
