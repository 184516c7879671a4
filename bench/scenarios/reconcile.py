"""`flashsale reconcile` at scale: its peak memory and time with N open holds in both stores.

N held reservations are made through ``AsyncEngine.reserve`` (each a distinct user, one unit, over 20 SKUs
of N / 20 units, a TTL of an hour so none lapses), their events applied to PostgreSQL with the worker's own
code (``writeback.postgres.apply_batch``), then ``flashsale reconcile --json`` runs as its own process,
twice (once with --quick): its wall time and its peak resident memory (the child's own ``ru_maxrss``),
per run and per held reservation. Reconcile reads both stores whole into memory before comparing
(README, Known limits); this is what that costs.

Checks: every reserve succeeded; each run exits 0 with no drift, no unapplied event, and checked at least
the N reservations (exactly N on servers of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from flashsale.bench.load import async_engine, drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_version, running
from flashsale.engine import AsyncEngine, SaleSettings
from flashsale.writeback.batch import Batch
from flashsale.writeback.database import migrate
from flashsale.writeback.postgres import apply_batch, ensure_offset, unapplied

SKUS = 20
TTL_MS = 3_600_000
APPLY_BATCH = 20_000

# `flashsale reconcile` in a fresh interpreter that writes its own peak RSS (KiB, Linux) to stderr at exit.
RECONCILE = [
    sys.executable,
    "-c",
    "import atexit, resource, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "f'\\nmaxrss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
    "from flashsale.cli import main\n"
    "sys.exit(main())",
    "--log-level",
    "WARNING",
    "reconcile",
    "--json",
]


@dataclass
class Settings:
    holds: int
    clients: int
    repeat: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        default = 5_000 if options.quick else 300_000
        return cls(options.holds or default, 200, 1 if options.quick else 2, options.loop)


async def _hold(engine: AsyncEngine, s: Settings, run_id: str, redis_url: str) -> dict[str, Any]:
    skus = [f"reconcile-{run_id}-{i}" for i in range(SKUS)]
    units = -(-s.holds // SKUS)
    now = int((await engine.redis.time())[0]) * 1000
    for sku in skus:
        await engine.load_sale(
            SaleSettings(sku=sku, total=units, starts_at=now - 60_000, reservation_ttl_ms=TTL_MS)
        )
    result = await drive(
        s.clients,
        s.holds,
        lambda i: engine.reserve(skus[i % SKUS], f"{run_id}-u{i}"),
        max_seconds=3600.0,
        redis_url=redis_url,
    )
    return result.as_dict()


async def _apply(engine: AsyncEngine, database_url: str) -> int:
    """Every unapplied event into PostgreSQL, partition by partition, as the worker applies them."""
    applied = 0
    conn = await psycopg.AsyncConnection.connect(database_url)
    try:
        for partition in range(engine.config.partitions):
            while True:
                offset = await ensure_offset(conn, partition)
                events = unapplied(await engine.read_events(partition, offset, APPLY_BATCH), offset)
                if not events:
                    break
                await apply_batch(conn, Batch.fold(partition, events), offset)
                applied += len(events)
    finally:
        await conn.close()
    return applied


async def _prepare(redis_url: str, database_url: str, s: Settings, run_id: str) -> dict[str, Any]:
    engine = async_engine(redis_url)
    await engine.load_scripts()
    try:
        started = time.monotonic()
        held = await _hold(engine, s, run_id, redis_url)
        hold_s = time.monotonic() - started
        started = time.monotonic()
        applied = await _apply(engine, database_url)
        return {"reserve": held, "reserve_s": round(hold_s, 1), "applied_events": applied,
                "apply_s": round(time.monotonic() - started, 1)}  # fmt: skip
    finally:
        await engine.close()


def _reconcile(redis_url: str, database_url: str) -> dict[str, Any]:
    env = {**os.environ, "FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    started = time.monotonic()
    done = subprocess.run(RECONCILE, env=env, capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.monotonic() - started
    maxrss = next(
        (int(line.split("=", 1)[1]) for line in done.stderr.splitlines() if line.startswith("maxrss_kib=")), 0
    )
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        document = {"error": (done.stdout + done.stderr)[-2000:]}
    return {
        "exit_code": done.returncode,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(maxrss / 1024, 1),
        "drift_count": document.get("drift_count"),
        "unapplied_events": document.get("unapplied_events"),
        "checked_reservations": document.get("checked_reservations"),
        "error": document.get("error"),
    }


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("reconcile", asdict(s))
    own_servers = options.redis_url is None and options.database_url is None
    with running(options.redis_url, postgres=True, database_url=options.database_url) as servers:
        assert servers.database_url is not None
        report.servers["redis"] = redis_version(servers.redis_url)
        migrate(servers.database_url)
        prepared = run(_prepare(servers.redis_url, servers.database_url, s, options.run_id), s.loop)
        runs = [_reconcile(servers.redis_url, servers.database_url) for _ in range(s.repeat)]
    ok = prepared["reserve"]["outcomes"].get("ok", 0)
    report.check(f"all {s.holds:,} reserves succeeded", ok == s.holds, str(prepared["reserve"]["outcomes"]))
    for i, r in enumerate(runs, 1):
        checked = r["checked_reservations"] or 0
        enough = checked == s.holds if own_servers else checked >= s.holds
        report.check(
            f"run {i}: exit 0, no drift, nothing unapplied, every hold checked",
            r["exit_code"] == 0 and r["drift_count"] == 0 and r["unapplied_events"] == 0 and enough,
            json.dumps(r),
        )
    report.figures = {**prepared, "runs": runs}
    report.table(
        f"`flashsale reconcile --json` with {s.holds:,} open holds over {SKUS} SKUs, applied to PostgreSQL",
        ["run", "checked reservations", "seconds", "peak RSS MB", "KB per hold", "µs per hold", "exit"],
        [
            [
                i,
                r["checked_reservations"],
                r["seconds"],
                r["peak_rss_mb"],
                round(r["peak_rss_mb"] * 1024 / max(s.holds, 1), 2),
                round(r["seconds"] * 1e6 / max(s.holds, 1), 1),
                r["exit_code"],
            ]
            for i, r in enumerate(runs, 1)
        ],
    )
    return report
