"""HTTP reservations per second as the API's worker count grows (``flashsale bench http-scaling
--api-workers 1 --api-workers 4 --api-workers 11``): issue 14's W-workers scaling, for a machine with the
cores for it (bench/manycore/http-scaling.sh).

For each W: ``flashsale serve --workers W`` against one Redis, then wrk (-t 4 -c 256, one bearer token per
request from a file of 300,000 users) for 5 s, every request a full reserve on a deep SKU of its
own (per-user limit high, so a user's repeat still reserves: the rounds share the token file). Reported per
W: requests/s, latency, the cores wrk, the API (all its workers) and Redis used, and CPU µs
per request for the API and Redis; the ratios against W = the smallest. A check per run that the API used
no more cores than it has workers (wrk's timed window and the servers' CPU agree) and that every answer was
a 201 counted by Redis.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.scenarios.http import INSTALL_HINT, _serve, _wrk, find_wrk
from flashsale.bench.servers import process_cpu_seconds, redis_cpu_seconds, redis_version, running
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.bounds import MAX_PER_USER_LIMIT
from flashsale.engine.settings import Settings as FlashsaleSettings

from flashsale.commands.token import mint


@dataclass
class Settings:
    workers: list[int]
    threads: int
    connections: int
    seconds: int
    tokens: int

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        workers = sorted(set(options.api_workers)) or [1, 2]
        connections = options.connections or (128 if options.quick else 256)
        if options.quick:
            return cls(workers, 2, connections, 3, 60_000)
        return cls(workers, 4, connections, 5, 300_000)


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("http-scaling", asdict(s))
    binary = find_wrk()
    if binary is None:
        report.notes.append(f"wrk not found, nothing measured: {INSTALL_HINT}")
        report.check("wrk available", False, INSTALL_HINT)
        return report
    runs: list[dict[str, Any]] = []
    with running(options.redis_url) as servers, tempfile.TemporaryDirectory(prefix="flashsale-bench-") as tmp:
        report.servers["redis"] = redis_version(servers.redis_url)
        settings = FlashsaleSettings.from_env(redis_url=servers.redis_url, jwt_secret=secrets.token_hex(32))
        engine = Engine.from_url(servers.redis_url, settings.engine_config())
        engine.load_scripts()
        tokens, warm_up = Path(tmp) / "tokens.txt", Path(tmp) / "warm-up.txt"
        tokens.write_text(
            "".join(mint(settings, f"hs{options.run_id}-{i}", ttl_s=3600) + "\n" for i in range(s.tokens))
        )
        warm_up.write_text(
            "".join(mint(settings, f"hw{options.run_id}-{i}", ttl_s=3600) + "\n" for i in range(2_000))
        )
        for workers in s.workers:
            sku = f"http-scaling-{options.run_id}-{workers}"
            engine.load_sale(
                SaleSettings(
                    sku=sku,
                    name="Deep stock",
                    total=100_000_000,
                    per_user_limit=MAX_PER_USER_LIMIT,
                    reservation_ttl_ms=600_000,
                )
            )
            with _serve(settings, workers) as (url, server):
                load = dict(connections=s.connections, threads=s.threads, pace_ms=0)
                _wrk(binary, url, warm_up, f"{sku}-warm-up", seconds=2, **load)  # other users, no such SKU
                api_before, redis_before = (
                    process_cpu_seconds(server.pid),
                    redis_cpu_seconds(servers.redis_url),
                )
                result = _wrk(binary, url, tokens, sku, seconds=s.seconds, **load)
                api_s = process_cpu_seconds(server.pid) - api_before
                redis_s = redis_cpu_seconds(servers.redis_url) - redis_before
            seconds_run = result["duration_us"] / 1e6
            reserved = engine.get_sale(sku).reserved
            runs.append(
                {
                    "workers": workers,
                    "requests": result["requests"],
                    "requests_per_s": result["requests_per_s"],
                    "p50_ms": result["latency_ms"]["p50"],
                    "p99_ms": result["latency_ms"]["p99"],
                    "statuses": result["statuses"],
                    "errors": result["errors"],
                    "reserved_in_redis": reserved,
                    "wrk_cores": result["wrk_cpu_share"],
                    "api_cores": round(api_s / seconds_run, 2),
                    "redis_cores": round(redis_s / seconds_run, 2),
                    "api_us_per_request": round(api_s / max(result["requests"], 1) * 1e6, 1),
                    "redis_us_per_request": round(redis_s / max(result["requests"], 1) * 1e6, 1),
                }
            )
        engine.close()
    report.figures["runs"] = runs
    report.figures["cores"] = os.cpu_count()
    for run in runs:
        w = run["workers"]
        created = run["statuses"].get("201", 0)
        socket_errors = {k: v for k, v in run["errors"].items() if k != "status" and v}
        # Redis may hold a few more: requests in flight when wrk's window closed were answered after it.
        in_flight = run["reserved_in_redis"] - created
        report.check(
            f"W={w}: every answer a 201, each a hold in Redis (+ at most the requests in flight at the end)",
            created == run["requests"] and 0 <= in_flight <= s.connections and not socket_errors,
            f"statuses {run['statuses']}, Redis reserved {run['reserved_in_redis']}, errors {run['errors']}",
        )
        report.check(
            f"W={w}: every request had its own user (no verified-token cache hits)",
            run["requests"] <= s.tokens,
            f"{run['requests']} requests, {s.tokens} users",
        )
        report.check(
            f"W={w}: the API used no more cores than it has workers",
            run["api_cores"] <= w + 0.05,
            f"{run['api_cores']} cores",
        )
    base = runs[0]
    for run in runs[1:]:
        report.ratio(
            f"requests/s, W={run['workers']} / W={base['workers']}",
            run["requests_per_s"],
            base["requests_per_s"],
        )
    report.table(
        f"POST /api/v1/reservations, `flashsale serve --workers W`, wrk -t {s.threads} -c {s.connections}, "
        f"{s.seconds} s per W, {os.cpu_count()} cores",
        [
            "W",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "wrk cores",
            "API cores",
            "Redis cores",
            "API CPU µs / request",
            "Redis CPU µs / request",
        ],
        [
            [
                r["workers"],
                f"{r['requests_per_s']:,.0f}",
                r["p50_ms"],
                r["p99_ms"],
                r["wrk_cores"],
                r["api_cores"],
                r["redis_cores"],
                r["api_us_per_request"],
                r["redis_us_per_request"],
            ]
            for r in runs
        ],
    )
    report.notes.append(
        "Every request is a full reserve by a user of its own (a deep SKU per W; the per-user limit is high "
        "only because the W runs share the token file). A warm-up of 2 s with other users precedes each "
        "timed run."
    )
    return report
