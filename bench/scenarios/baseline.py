"""Scenario 3: flashsale side by side with the design document's locking design, same load, same servers.

At each concurrency level both systems get the same hot SKU (S units), the same budget of attempts (each a
distinct user) and the same time cap, against the same Redis; the baseline also uses PostgreSQL (started by
the launcher). Reported: attempts/s and p99 of each, and the flashsale/baseline ratios. Checks: each system
hands out exactly S units and its counters add up (flashsale: Redis; baseline: the inventory row, the
reservation rows and the Redis stock counter). Each side's CPU per attempt is reported too: the client
process, Redis and (when started here) PostgreSQL, all its backends included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from flashsale.bench import plots
from flashsale.bench.baselines.locking import LockingReservations
from flashsale.bench.checks import invariant_1, sku_counters
from flashsale.bench.load import LoadResult, async_engine, drive, run, warm_up
from flashsale.bench.options import Options
from flashsale.bench.report import LOAD_COLUMNS, Report
from flashsale.bench.servers import process_cpu_seconds, redis_version, running
from flashsale.bench.stats import us_per_call
from flashsale.engine import SaleSettings
from psycopg_pool import AsyncConnectionPool


@dataclass
class Settings:
    clients: list[int]
    units: int
    attempts: int
    max_seconds: float
    postgres_pool: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls([10, 1000], 100, 20_000, 2.5, 16, options.loop)
        return cls([10, 100, 1000, 10_000], 1000, 50_000, 15.0, 16, options.loop)


def _row(system: str, r: LoadResult, postgres_cpu_s: float | None) -> list[Any]:
    lat = r.latencies.summary()
    return [
        system,
        r.clients,
        r.attempts,
        r.successes,
        round(r.rate),
        lat["p50_ms"],
        lat["p99_ms"],
        round(r.client_us, 1),
        round(r.redis_us, 1),
        "—" if postgres_cpu_s is None else round(us_per_call(postgres_cpu_s, r.attempts), 1),
    ]


async def _runs(
    redis_url: str, database_url: str, postgres_pid: int | None, s: Settings, run_id: str, report: Report
) -> dict[str, Any]:
    engine = async_engine(redis_url)
    await engine.load_scripts()
    await LockingReservations.create_schema(database_url)
    pool = AsyncConnectionPool(
        database_url, min_size=s.postgres_pool, max_size=s.postgres_pool, open=False, timeout=600
    )
    await pool.open(wait=True)
    # Waits for a free connection like a servlet thread waits on its pool (a plain pool would refuse).
    plain_redis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=64, timeout=600
        )
    )
    baseline = LockingReservations(plain_redis, pool)
    out: dict[str, Any] = {"flashsale": [], "baseline": [], "cdf": {}}
    rows: list[list[Any]] = []
    try:
        for clients in s.clients:
            sku = f"base-{run_id}-{clients}"
            await engine.load_sale(SaleSettings(sku=sku, total=s.units, reservation_ttl_ms=600_000))
            await warm_up(engine, clients, sku)
            flash = await drive(
                clients,
                s.attempts,
                lambda i, sku=sku: engine.reserve(sku, f"u{i}"),
                max_seconds=s.max_seconds,
                redis_url=redis_url,
            )
            counters = await sku_counters(engine, sku)
            ok, detail = invariant_1(counters)
            report.check(
                f"flashsale {clients} clients: exactly {s.units} units reserved, invariant 1",
                ok and flash.successes == s.units == counters["reserved"],
                f"{flash.successes} successes; {detail}",
            )

            await baseline.create_sale(sku, s.units)
            postgres_before = process_cpu_seconds(postgres_pid) if postgres_pid else 0.0
            base = await drive(
                clients,
                s.attempts,
                lambda i, sku=sku: baseline.reserve(sku, f"u{i}"),
                max_seconds=s.max_seconds,
                redis_url=redis_url,
            )
            postgres_cpu = process_cpu_seconds(postgres_pid) - postgres_before if postgres_pid else None
            inv = await baseline.inventory(sku)
            stock = int(await plain_redis.get(f"stock:{sku}") or 0)
            adds_up = (
                inv["available"] + inv["reserved"] + inv["sold"] == inv["total"] and min(inv.values()) >= 0
            )
            sold_out = base.successes == s.units == inv["reserved"] == inv["reservation_rows"]
            report.check(
                f"baseline {clients} clients: exactly {s.units} units reserved, counts add up",
                adds_up and (sold_out or base.attempts < 2 * s.units) and stock == inv["available"],
                f"{base.successes} successes in {base.attempts} attempts; {inv}; redis stock {stock}",
            )
            report.check(
                f"baseline {clients} clients: sold out within the time cap",
                base.successes == s.units,
                f"{base.attempts} attempts in {base.seconds:.1f} s",
            )
            for name, r, pg in (("flashsale", flash, None), ("baseline", base, postgres_cpu)):
                refusals = {k: v for k, v in r.outcomes.items() if k != "ok"}
                report.check(
                    f"{name} {clients} clients: every refusal is OUT_OF_STOCK",
                    set(refusals) <= {"OUT_OF_STOCK"},
                    str(refusals),
                )
                level = {**r.as_dict(), "sku": sku}
                if pg is not None:
                    level["postgres_cpu_s"] = round(pg, 3)
                    level["postgres_us_per_call"] = round(us_per_call(pg, r.attempts), 2)
                out[name].append(level)
                out["cdf"][f"{name}, {clients} clients"] = r.latencies.cdf()
                rows.append(_row(name, r, pg if name == "baseline" else None))
    finally:
        await engine.close()
        await pool.close()
        await plain_redis.aclose()
    out["rows"] = rows
    return out


def _cpu_us(level: dict[str, Any]) -> float:
    """Every process's CPU µs per attempt: the client's, Redis's and PostgreSQL's (when measured)."""
    return float(
        level["client_us_per_call"] + level.get("redis_us_per_call", 0) + level.get("postgres_us_per_call", 0)
    )


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("baseline", asdict(s))
    with running(
        options.redis_url, postgres=True, database_url=options.database_url, server=options.server
    ) as servers:
        assert servers.database_url is not None
        report.servers["redis"] = redis_version(servers.redis_url)
        figures = run(
            _runs(servers.redis_url, servers.database_url, servers.postgres_pid, s, options.run_id, report),
            s.loop,
        )
    report.figures = figures
    report.table(
        f"Hot SKU, {s.units:,} units, {s.attempts:,} attempts or {s.max_seconds:.0f} s per system and level",
        ["system", *LOAD_COLUMNS, "client µs/call", "redis µs/call", "postgresql µs/call"],
        figures["rows"],
    )
    ratio_rows = []
    for flash, base in zip(figures["flashsale"], figures["baseline"], strict=True):
        speedup = flash["attempts_per_s"] / base["attempts_per_s"] if base["attempts_per_s"] else 0.0
        p99 = flash["latency"]["p99_ms"] / base["latency"]["p99_ms"] if base["latency"]["p99_ms"] else 0.0
        cpu = _cpu_us(base) / _cpu_us(flash) if _cpu_us(flash) else 0.0
        ratio_rows.append([flash["clients"], round(speedup, 1), round(p99, 3), round(cpu, 1)])
    report.table(
        "flashsale / baseline",
        [
            "clients",
            "throughput ratio",
            "p99 ratio (lower is better)",
            "CPU µs per attempt, all processes: baseline / flashsale",
        ],
        ratio_rows,
    )
    headline = next((r for r in ratio_rows if r[0] == 1000), ratio_rows[-1])
    flash = next(f for f in figures["flashsale"] if f["clients"] == headline[0])
    base = next(b for b in figures["baseline"] if b["clients"] == headline[0])
    report.ratio(
        f"throughput flashsale / baseline at {headline[0]} clients",
        flash["attempts_per_s"],
        base["attempts_per_s"],
        "≥ 30",
        headline[1] >= 30,
    )
    report.ratio(
        f"p99 flashsale / baseline at {headline[0]} clients",
        flash["latency"]["p99_ms"],
        base["latency"]["p99_ms"],
        "≤ 0.1",
        headline[2] <= 0.1,
    )
    report.ratio(
        f"CPU per attempt (client + Redis + PostgreSQL) baseline / flashsale at {headline[0]} clients",
        _cpu_us(base),
        _cpu_us(flash),
    )
    report.notes.append(
        f"baseline: PostgreSQL pool of {s.postgres_pool} connections (Spring Boot's HikariCP default is 10); "
        "the Kafka publish of the design's step 6 is left out, which flatters the baseline. flashsale's "
        "write-behind worker is not running here (scenario write-behind measures it)."
    )
    busiest = max(figures["baseline"], key=lambda level: level["client_cpu_s"] / max(level["seconds"], 1e-9))
    cores = busiest["client_cpu_s"] / max(busiest["seconds"], 1e-9)
    report.notes.append(
        f"Each system is driven by one Python process. The baseline's used {cores:.2f} cores at "
        f"{busiest['clients']} clients: "
        "every attempt, refused or not, costs it a PostgreSQL transaction (BEGIN, the active-reservation "
        "lookup, COMMIT/ROLLBACK) and 2-4 Redis commands, each a round trip with its own client work, while "
        "each success also holds the inventory row lock from SELECT … FOR UPDATE to COMMIT."
    )
    if options.plots:
        report.plots.append(
            plots.by_concurrency(
                {"flashsale": figures["flashsale"], "baseline (design document)": figures["baseline"]},
                "Hot SKU: flashsale vs the design document's locking design",
                options.results_dir,
                "baseline-concurrency.png",
            )
        )
        report.plots.append(
            plots.latency_cdf(
                {k: v for k, v in figures["cdf"].items() if k.endswith(f" {headline[0]} clients")},
                f"Reserve latency at {headline[0]} clients",
                options.results_dir,
                "baseline-latency-cdf.png",
            )
        )
    return report
