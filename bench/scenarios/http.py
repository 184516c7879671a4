"""Scenario 5: POST /api/v1/reservations end to end through ``flashsale serve``, driven by ``wrk``.

``wrk`` (Debian's package; installed with apt-get when missing and we are root) is a C load generator, so
the generator is not the bottleneck: its CPU time is reported next to the server's and Redis's. Every
request carries its own user's bearer token (minted here, read by bench/wrk/reserve.lua), so no request
is refused for being a repeat.
  1. Saturation: as many requests as wrk can push at a hot SKU of S units: requests/s, latency, and the
     check that exactly S requests got 201 and Redis's counters add up.
  2. Paced: connections that wait between requests, about 5,000 requests/s offered, on a SKU with stock
     for all: the latency at that rate (every answer must be 201).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flashsale.bench import plots
from flashsale.bench.checks import invariant_1
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_cpu_seconds, redis_version, running
from flashsale.bench.stack import FLASHSALE
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.settings import Settings as FlashsaleSettings

from flashsale.commands.token import mint
from flashsale.launcher import free_port, wait_for_port

LUA = Path(__file__).resolve().parent.parent / "wrk" / "reserve.lua"
INSTALL_HINT = "install it with: sudo apt-get install wrk"


@dataclass
class Settings:
    units: int
    connections: int
    threads: int
    seconds: int
    paced_connections: int
    pace_ms: int
    paced_seconds: int
    tokens: int
    server_workers: int

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(500, 128, 2, 5, 50, 10, 5, 60_000, 2)
        return cls(1000, 256, 2, 15, 50, 10, 15, 200_000, 2)


def find_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        return shutil.which("wrk")
    return None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and its children (uvicorn's workers), from /proc (Linux)."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _cpu_seconds(int(child))
    return total


@contextlib.contextmanager
def _serve(settings: FlashsaleSettings, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, **settings.as_env(), "FLASHSALE_PORT": str(port)}
    process = subprocess.Popen(
        [*FLASHSALE, "--log-level", "WARNING", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("flashsale serve did not become healthy within 30 s")
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wrk(
    binary: str,
    url: str,
    tokens: Path,
    sku: str,
    *,
    connections: int,
    threads: int,
    seconds: int,
    pace_ms: int,
) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            binary,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
            "--",
            str(tokens),
            sku,
            str(pace_ms),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"^RESULT (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:300]} {out.stdout[-300:]}")
    result: dict[str, Any] = json.loads(match.group(1))
    seconds_run = result["duration_us"] / 1e6
    result["requests_per_s"] = round(result["requests"] / seconds_run, 1)
    result["wrk_cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)
    result["wrk_cpu_share"] = round(result["wrk_cpu_s"] / seconds_run, 3)  # cores used on average
    result["latency_ms"] = {k: round(v / 1000, 3) for k, v in result.pop("latency_us").items()}
    return result


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("http", asdict(s))
    binary = find_wrk()
    if binary is None:
        report.notes.append(f"wrk not found, nothing measured: {INSTALL_HINT}")
        report.check("wrk available", False, INSTALL_HINT)
        return report
    with running(options.redis_url) as servers, tempfile.TemporaryDirectory(prefix="flashsale-bench-") as tmp:
        report.servers["redis"] = redis_version(servers.redis_url)
        settings = FlashsaleSettings.from_env(redis_url=servers.redis_url, jwt_secret=secrets.token_hex(32))
        hot, stock = f"http-hot-{options.run_id}", f"http-stock-{options.run_id}"
        engine = Engine.from_url(servers.redis_url, settings.engine_config())
        engine.load_scripts()
        engine.load_sale(SaleSettings(sku=hot, name="Hot SKU", total=s.units, reservation_ttl_ms=600_000))
        engine.load_sale(
            SaleSettings(sku=stock, name="Deep stock", total=100_000_000, reservation_ttl_ms=600_000)
        )
        tokens = Path(tmp) / "tokens.txt"
        tokens.write_text(
            "".join(mint(settings, f"w{options.run_id}-{i}", ttl_s=3600) + "\n" for i in range(s.tokens))
        )
        figures: dict[str, Any] = {}
        with _serve(settings, s.server_workers) as (url, server):
            for name, sku, connections, pace, seconds in (
                ("saturation", hot, s.connections, 0, s.seconds),
                ("paced", stock, s.paced_connections, s.pace_ms, s.paced_seconds),
            ):
                server_cpu, redis_cpu = _cpu_seconds(server.pid), redis_cpu_seconds(servers.redis_url)
                result = _wrk(
                    binary,
                    url,
                    tokens,
                    sku,
                    connections=connections,
                    threads=s.threads,
                    seconds=seconds,
                    pace_ms=pace,
                )
                result["server_cpu_s"] = round(_cpu_seconds(server.pid) - server_cpu, 2)
                result["redis_cpu_s"] = round(redis_cpu_seconds(servers.redis_url) - redis_cpu, 2)
                result["connections"], result["pace_ms"], result["sku"] = connections, pace, sku
                figures[name] = result
        sale = engine.get_sale(hot)
        engine.close()
    sat, paced = figures["saturation"], figures["paced"]
    counters = {
        "total": sale.total,
        "available": sale.available,
        "reserved": sale.reserved,
        "sold": sale.sold,
    }
    ok, detail = invariant_1(counters)
    report.check(
        "saturation: exactly the units got 201 Created",
        sat["statuses"].get("201", 0) == s.units,
        f"statuses {sat['statuses']}",
    )
    report.check(
        "saturation: Redis agrees (reserved == units, invariant 1)", ok and sale.reserved == s.units, detail
    )
    # wrk counts every non-2xx answer as a "status" error; the sold-out 400s are expected answers.
    socket_errors = {k: v for k, v in sat["errors"].items() if k != "status"}
    report.check(
        "saturation: every other answer is 400 OUT_OF_STOCK, no socket errors",
        set(sat["statuses"]) <= {"201", "400"} and not any(socket_errors.values()),
        f"statuses {sat['statuses']}, errors {sat['errors']}",
    )
    report.check(
        "paced: every answer is 201 Created, no socket errors",
        set(paced["statuses"]) == {"201"} and not any(paced["errors"].values()),
        f"statuses {paced['statuses']}, errors {paced['errors']}",
    )
    for name in ("saturation", "paced"):
        report.check(
            f"{name}: every request had its own user",
            figures[name]["tokens_reused"] is False,
            f"{figures[name]['requests']} requests, {s.tokens} tokens",
        )
    report.figures = figures
    rows = [
        [
            name,
            f["connections"],
            f["requests"],
            round(f["requests_per_s"]),
            f["latency_ms"]["p50"],
            f["latency_ms"]["p99"],
            f["latency_ms"]["p99_9"],
            f["wrk_cpu_share"],
            round(f["server_cpu_s"] / (f["duration_us"] / 1e6), 2),
            round(f["redis_cpu_s"] / (f["duration_us"] / 1e6), 2),
        ]
        for name, f in figures.items()
    ]
    report.table(
        f"POST /api/v1/reservations, `flashsale serve --workers {s.server_workers}`, wrk -t {s.threads}",
        [
            "run",
            "connections",
            "requests",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "wrk cores",
            "server cores",
            "redis cores",
        ],
        rows,
    )
    report.ratio(
        "saturation requests/s / 10,000 target",
        sat["requests_per_s"],
        10_000,
        "≥ 1",
        sat["requests_per_s"] >= 10_000,
    )
    report.ratio(
        f"paced p99 ms at {paced['requests_per_s']:,.0f} req/s / 10 ms target",
        paced["latency_ms"]["p99"],
        10,
        "≤ 1 (at 5k req/s)",
        paced["latency_ms"]["p99"] <= 10,
    )
    report.notes.append(
        "'cores' = CPU seconds used per second of the run (2 cores on this machine, shared by "
        "wrk, the server, Redis and everyone else's work)"
    )
    if options.plots:
        report.plots.append(
            plots.bars(
                {name: f["requests_per_s"] for name, f in figures.items()},
                {name: f["latency_ms"]["p99"] for name, f in figures.items()},
                "HTTP end to end: POST /api/v1/reservations",
                options.results_dir,
                "http.png",
            )
        )
    return report
