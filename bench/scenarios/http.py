"""Scenario 5: POST /api/v1/reservations end to end through ``flashsale serve``, driven by ``wrk``.

``wrk`` (Debian's package; installed with apt-get when missing and we are root) is a C load generator, so
the generator is not the bottleneck: its CPU time is reported next to the server's and Redis's. Every
request carries its own user's bearer token (minted here, read by bench/wrk/reserve.lua), so no request
is refused for being a repeat.
  1. Saturation: as many requests as wrk can push at a hot SKU of S units: requests/s, latency, and the
     check that exactly S requests got 201 and Redis's counters add up (most answers are sold-out refusals).
  1b. Saturation, every request a reservation: the same push at a SKU with stock for all, in rounds: the
     API's and Redis's CPU per successful reservation, and the tail (p99 / p50) round after round.
  1c. Transport (issue 14): the same push, every request a reservation, with the API reaching Redis over
     loopback TCP and over the unix socket (how `flashsale up` connects it, and the runs above), in
     alternate rounds against the same Redis: the API's and Redis's CPU per reservation, each way.
  1d. Coalescing (issue 14): the same, with plain reserves coalesced into reserve_many.lua calls (the
     default, engine/coalescing.py) and one reserve.lua call each, in alternate rounds.
  1e. With the write-behind worker running (issue 14): PostgreSQL and Kafka started, ``flashsale worker``
     drains what the runs before left in the streams, then rounds of 1b run while it drains theirs; at
     the end every event is in both sinks and ``flashsale reconcile`` finds no drift.
  2. Paced: connections that wait between requests, about 5,000 requests/s offered, on a SKU with stock
     for all: the latency at that rate (every answer must be 201).
  3. Sold out (issue 14): the herd that keeps pressing after the hot SKU sold out, a fixed set of
     shoppers retrying with their tokens, against two servers side by side, alternately: one whose every
     refusal asks Redis (``FLASHSALE_SOLDOUT_TTL_MS=0``) and one answering from its sold-out flags
     (api/soldout.py, the default). The figure is the API's CPU per refusal (all workers, /proc),
     the whole request through uvicorn, auth and rate limit included.
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

import msgspec
from flashsale.bench import plots
from flashsale.bench.checks import invariant_1
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import (
    process_cpu_seconds,
    redis_cpu_seconds,
    redis_version,
    running,
    script_seconds,
)
from flashsale.bench.stack import FLASHSALE, write_behind_stack
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
    soldout_seconds: int
    soldout_rounds: int
    soldout_shoppers: int
    success_rounds: int
    transport_rounds: int
    coalescing_rounds: int
    worker_rounds: int

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(500, 128, 2, 5, 50, 10, 5, 200_000, 2, 4, 1, 2_000, 1, 1, 1, 0)
        # Tokens for ~35k requests/s over a 10 s round: every request its own user (checked).
        return cls(1000, 256, 2, 10, 50, 10, 15, 360_000, 2, 10, 2, 2_000, 3, 4, 4, 2)


def find_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        return shutil.which("wrk")
    return None


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


def _measured(
    binary: str,
    url: str,
    server: subprocess.Popen[bytes],
    redis_url: str,
    tokens: Path,
    sku: str,
    **load: int,
) -> dict[str, Any]:
    """One wrk run against the server at ``url``, with the CPU seconds its processes and Redis used, and
    the seconds Redis spent in scripts (the rest of its CPU: reading, parsing, answering, the event loop)."""
    server_cpu, redis_cpu = process_cpu_seconds(server.pid), redis_cpu_seconds(redis_url)
    scripts = script_seconds(redis_url)
    result = _wrk(binary, url, tokens, sku, **load)
    result["server_cpu_s"] = round(process_cpu_seconds(server.pid) - server_cpu, 2)
    result["redis_cpu_s"] = round(redis_cpu_seconds(redis_url) - redis_cpu, 2)
    result["redis_script_s"] = round(script_seconds(redis_url) - scripts, 3)
    return result


def _saturated(
    binary: str,
    url: str,
    server: subprocess.Popen[bytes],
    redis_url: str,
    tokens: Path,
    sku: str,
    s: Settings,
) -> dict[str, Any]:
    """One saturation run of ``_measured`` at the scenario's connections and length, every request a 201."""
    load = {"connections": s.connections, "threads": s.threads, "seconds": s.seconds, "pace_ms": 0}
    result = _measured(binary, url, server, redis_url, tokens, sku, **load)
    result["connections"], result["pace_ms"], result["sku"] = s.connections, 0, sku
    return result


SOLD_OUT_MODES = (
    ("every refusal asks Redis (FLASHSALE_SOLDOUT_TTL_MS=0)", 0),
    ("answered from the sold-out flag (default)", FlashsaleSettings().soldout_ttl_ms),
)


def _sold_out(
    binary: str, settings: FlashsaleSettings, s: Settings, sku: str, tokens: Path, redis_url: str
) -> dict[str, dict[str, Any]]:
    """API CPU per sold-out refusal, flags off and on, alternately against fresh servers (same Redis)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SOLD_OUT_MODES}
    for _ in range(s.soldout_rounds):
        for name, ttl_ms in SOLD_OUT_MODES:
            mode = msgspec.structs.replace(settings, soldout_ttl_ms=ttl_ms)
            with _serve(mode, s.server_workers) as (url, server):
                load = dict(connections=64, threads=1, pace_ms=0)
                _wrk(binary, url, tokens, sku, seconds=2, **load)  # tokens verified, flags set
                server_cpu, redis_cpu = process_cpu_seconds(server.pid), redis_cpu_seconds(redis_url)
                result = _wrk(binary, url, tokens, sku, seconds=s.soldout_seconds, **load)
                result["server_cpu_s"] = process_cpu_seconds(server.pid) - server_cpu
                result["redis_cpu_s"] = redis_cpu_seconds(redis_url) - redis_cpu
                runs[name].append(result)
    figures = {}
    for name, results in runs.items():
        requests = sum(r["requests"] for r in results)
        figures[name] = {
            "requests": requests,
            "requests_per_s": round(sum(r["requests_per_s"] for r in results) / len(results), 1),
            "api_cpu_us_per_refusal": round(sum(r["server_cpu_s"] for r in results) / requests * 1e6, 1),
            "redis_cpu_us_per_refusal": round(sum(r["redis_cpu_s"] for r in results) / requests * 1e6, 2),
            "p99_ms": max(r["latency_ms"]["p99"] for r in results),
            "statuses": {k: sum(r["statuses"].get(k, 0) for r in results) for k in results[0]["statuses"]},
            "errors": {k: sum(r["errors"][k] for r in results) for k in results[0]["errors"]},
            "runs": results,
        }
    return figures


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
        # The API reaches a Redis started here on its unix socket, as under `flashsale up`; the CPU
        # figures are read over TCP (INFO, once per run: not in the per-request figures).
        api_redis = servers.redis_socket_url or servers.redis_url
        settings = FlashsaleSettings.from_env(redis_url=api_redis, jwt_secret=secrets.token_hex(32))
        hot, stock = f"http-hot-{options.run_id}", f"http-stock-{options.run_id}"
        # Saturation, every request a reservation: a SKU of its own per round (the rounds share the tokens,
        # and a user may hold one unit of a SKU).
        deep = [f"http-deep-{options.run_id}-{i + 1}" for i in range(s.success_rounds)]
        # Side by side, every request a 201, the API restarted for each round, alternately: the API's
        # Redis connection over loopback TCP or the unix socket; plain reserves coalesced (the default)
        # or one reserve.lua call each (engine/coalescing.py).
        comparisons: dict[str, dict[str, FlashsaleSettings]] = {
            "transport": (
                {
                    "loopback TCP": msgspec.structs.replace(settings, redis_url=servers.redis_url),
                    "unix socket": msgspec.structs.replace(settings, redis_url=servers.redis_socket_url),
                }
                if servers.redis_socket_url
                else {}
            ),
            "coalescing": {
                "one script call each": msgspec.structs.replace(settings, coalesce_reserves=1),
                "coalesced": settings,
            },
        }
        rounds_of = {"transport": s.transport_rounds, "coalescing": s.coalescing_rounds}
        side_runs = [
            (what, f"{kind}, round {r + 1}", kind, f"http-{what}-{options.run_id}-{r + 1}-{i}")
            for what, variants in comparisons.items()
            for r in range(rounds_of[what] if variants else 0)
            for i, kind in enumerate(list(variants)[r % 2 :] + list(variants)[: r % 2])
        ]
        # Last, every request a 201 with the write-behind worker draining the streams into PostgreSQL and
        # Kafka meanwhile (its Redis work counted in the figures), after it caught up with the runs above.
        worker_runs = [
            (
                f"saturation, every request a 201, worker running (round {r + 1})",
                f"http-worker-{options.run_id}-{r}",
            )
            for r in range(s.worker_rounds)
        ]
        engine = Engine.from_url(servers.redis_url, settings.engine_config())
        engine.load_scripts()
        # Its holds outlive the run (about 10 minutes with the worker's phase): the sold-out phase at the end
        # needs the SKU still sold out.
        engine.load_sale(SaleSettings(sku=hot, name="Hot SKU", total=s.units, reservation_ttl_ms=3_600_000))
        for sku in (stock, *deep, *(sku for *_, sku in side_runs), *(sku for _, sku in worker_runs)):
            engine.load_sale(
                SaleSettings(sku=sku, name="Deep stock", total=100_000_000, reservation_ttl_ms=600_000)
            )
        tokens = Path(tmp) / "tokens.txt"
        tokens.write_text(
            "".join(mint(settings, f"w{options.run_id}-{i}", ttl_s=3600) + "\n" for i in range(s.tokens))
        )
        figures: dict[str, Any] = {}
        with _serve(settings, s.server_workers) as (url, server):
            successes = [
                (f"saturation, every request a 201 (round {i + 1})", deep[i], s.connections, 0, s.seconds)
                for i in range(s.success_rounds)
            ]
            for name, sku, connections, pace, seconds in (
                ("saturation", hot, s.connections, 0, s.seconds),
                *successes,
                ("paced", stock, s.paced_connections, s.pace_ms, s.paced_seconds),
            ):
                result = _measured(
                    binary,
                    url,
                    server,
                    servers.redis_url,
                    tokens,
                    sku,
                    connections=connections,
                    threads=s.threads,
                    seconds=seconds,
                    pace_ms=pace,
                )
                result["connections"], result["pace_ms"], result["sku"] = connections, pace, sku
                figures[name] = result
        side: dict[str, dict[str, Any]] = {what: {} for what in comparisons}
        for what, name, kind, sku in side_runs:
            with _serve(comparisons[what][kind], s.server_workers) as (url, server):
                result = _saturated(binary, url, server, servers.redis_url, tokens, sku, s)
                result["variant"] = kind
                side[what][name] = result
        writeback = (
            _with_worker(binary, settings, s, servers.redis_url, tokens, worker_runs) if worker_runs else {}
        )
        figures.update(writeback.pop("runs", {}))
        sale = engine.get_sale(hot)
        engine.close()
        # The sold-out herd: the hot SKU is sold out now; a few thousand shoppers keep pressing.
        shoppers = Path(tmp) / "shoppers.txt"
        shoppers.write_text(
            "".join(
                mint(settings, f"s{options.run_id}-{i}", ttl_s=3600) + "\n" for i in range(s.soldout_shoppers)
            )
        )
        sold_out = _sold_out(binary, settings, s, hot, shoppers, servers.redis_url)
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
    rounds = {name: f for name, f in figures.items() if name.startswith("saturation, every request")}
    for name, f in rounds.items():
        report.check(
            f"{name}: every answer is 201 Created, no socket errors",
            set(f["statuses"]) == {"201"} and not any(f["errors"].values()),
            f"statuses {f['statuses']}, errors {f['errors']}",
        )
    report.check(
        "paced: every answer is 201 Created, no socket errors",
        set(paced["statuses"]) == {"201"} and not any(paced["errors"].values()),
        f"statuses {paced['statuses']}, errors {paced['errors']}",
    )
    for name in figures:
        report.check(
            f"{name}: every request had its own user",
            figures[name]["tokens_reused"] is False,
            f"{figures[name]['requests']} requests, {s.tokens} tokens",
        )
    for name, f in sold_out.items():
        socket_errors = {k: v for k, v in f["errors"].items() if k != "status"}
        report.check(
            f"sold out, {name}: every answer is 400 OUT_OF_STOCK, no socket errors",
            set(f["statuses"]) == {"400"} and not any(socket_errors.values()),
            f"statuses {f['statuses']}, errors {f['errors']}",
        )
    (off_name, _), (on_name, _) = SOLD_OUT_MODES
    off, on = sold_out[off_name], sold_out[on_name]
    report.check(
        "sold out, flag: refusals answered without Redis (under 1 µs of Redis CPU per refusal)",
        on["redis_cpu_us_per_refusal"] < 1,
        f"{on['redis_cpu_us_per_refusal']} µs of Redis CPU per refusal",
    )
    for what, runs in side.items():
        for name, f in runs.items():
            report.check(
                f"{what}, {name}: every answer is 201 Created, no socket errors, every request its own user",
                set(f["statuses"]) == {"201"} and not any(f["errors"].values()) and not f["tokens_reused"],
                f"statuses {f['statuses']}, errors {f['errors']}, {f['requests']} requests",
            )
    if writeback:
        report.check(
            "worker running: the worker caught up with the runs before it, and then with its own",
            writeback["caught_up"] and writeback["drained"],
            f"{writeback['backlog_events']:,} events drained in {writeback['caught_up_s']} s before; "
            f"{writeback['drained_s']} s to drain after",
        )
        report.check(
            "worker running: `flashsale reconcile` finds no drift (Redis, PostgreSQL, Kafka)",
            writeback["reconcile_exit"] == 0,
            f"exit {writeback['reconcile_exit']}",
        )
    report.figures = {**figures, "sold_out": sold_out, **side, "writeback": writeback}
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
            round(f["server_cpu_s"] / f["requests"] * 1e6),
            round(f["redis_cpu_s"] / f["requests"] * 1e6, 1),
            round(f["redis_script_s"] / f["requests"] * 1e6, 1),
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
            "API CPU µs / request",
            "Redis CPU µs / request",
            "of which in scripts µs",
        ],
        rows,
    )
    report.table(
        f"Sold out: the API's CPU per OUT_OF_STOCK refusal, `--workers {s.server_workers}`, "
        f"{s.soldout_shoppers:,} shoppers retrying, wrk -t 1 -c 64, "
        f"{s.soldout_rounds} × {s.soldout_seconds} s per mode, alternately",
        ["mode", "requests", "requests/s", "API CPU µs / refusal", "Redis CPU µs / refusal", "p99 ms"],
        [
            [
                name,
                f["requests"],
                round(f["requests_per_s"]),
                f["api_cpu_us_per_refusal"],
                f["redis_cpu_us_per_refusal"],
                f["p99_ms"],
            ]
            for name, f in sold_out.items()
        ],
    )
    titles = {
        "transport": "Redis transport, every request a 201: the API on loopback TCP and on the unix socket",
        "coalescing": "Coalesced reserves, every request a 201: one reserve.lua call each "
        "(FLASHSALE_COALESCE_RESERVES=1) and plain reserves coalesced (the default)",
    }
    for what, runs in side.items():
        if runs:
            _side_by_side(report, s, titles[what], what, runs)
    report.ratio(
        "sold out: API CPU µs per refusal with the flag / 60 µs target",
        on["api_cpu_us_per_refusal"],
        60,
        "≤ 1",
        on["api_cpu_us_per_refusal"] <= 60,
    )
    report.ratio(
        "sold out: API CPU per refusal, flag / every refusal asks Redis",
        on["api_cpu_us_per_refusal"],
        off["api_cpu_us_per_refusal"],
    )
    report.ratio(
        "saturation requests/s (mostly sold-out refusals) / 10,000 target",
        sat["requests_per_s"],
        10_000,
        "≥ 1",
        sat["requests_per_s"] >= 10_000,
    )
    server_s, redis_s, script_s = (
        sum(f[k] for f in rounds.values()) for k in ("server_cpu_s", "redis_cpu_s", "redis_script_s")
    )
    created = sum(f["requests"] for f in rounds.values())
    best = max(rounds.values(), key=lambda f: f["requests_per_s"])
    report.ratio(
        "saturation, every request a 201: requests/s (best round) / 10,000 target",
        best["requests_per_s"],
        10_000,
        "≥ 1",
        best["requests_per_s"] >= 10_000,
    )
    report.ratio(
        "API CPU µs per successful reservation (every round) / 150 µs target",
        round(server_s / created * 1e6, 1),
        150,
        "≤ 1",
        server_s / created * 1e6 <= 150,
    )
    report.ratio(
        "Redis CPU µs per HTTP reservation (every round) / 15 µs target",
        round(redis_s / created * 1e6, 1),
        15,
        "≤ 1",
        redis_s / created * 1e6 <= 15,
    )
    # Near 1: Redis's CPU per reservation is the script's own work, and the round trips (reading, parsing,
    # answering, shared by each pipeline's calls) cost it little; well under 1: the network side is the cost.
    report.ratio(
        "Redis per HTTP reservation: time in scripts / CPU (every round)",
        round(script_s / created * 1e6, 1),
        round(redis_s / created * 1e6, 1),
    )
    # The tail with the API alone on its cores, and with the worker taking its share of them (2 cores here).
    for label, worker in (("", False), (" with the worker running", True)):
        tails = [
            f["latency_ms"]["p99"] / f["latency_ms"]["p50"]
            for name, f in rounds.items()
            if ("worker running" in name) == worker
        ]
        if tails:
            report.ratio(
                f"saturation tail, every request a 201{label}: worst round's p99/p50 / 3",
                round(max(tails), 2),
                3,
                "≤ 1 (p99 ≤ 3× p50 in every round)",
                max(tails) <= 3,
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
        "wrk, the server, Redis and everyone else's work); 'in scripts' = Redis's time inside EVALSHA "
        "calls (INFO commandstats: wall time, the commands the script makes included), the rest of its CPU "
        "being the connections' reads, parsing and replies"
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


def _side_by_side(report: Report, s: Settings, title: str, what: str, runs: dict[str, Any]) -> None:
    """A table of alternate rounds of two variants, and the ratios of their CPU per reservation."""
    report.table(
        f"{title}, alternate rounds against the same Redis, `--workers {s.server_workers}`, "
        f"wrk -t {s.threads} -c {s.connections}",
        [
            "run",
            "requests",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "API CPU µs / request",
            "Redis CPU µs / request",
        ],
        [
            [
                name,
                f["requests"],
                round(f["requests_per_s"]),
                f["latency_ms"]["p50"],
                f["latency_ms"]["p99"],
                round(f["server_cpu_s"] / f["requests"] * 1e6),
                round(f["redis_cpu_s"] / f["requests"] * 1e6, 1),
            ]
            for name, f in runs.items()
        ],
    )
    variants = list(dict.fromkeys(f["variant"] for f in runs.values()))
    per = {
        kind: {
            k: sum(f[k] for f in runs.values() if f["variant"] == kind)
            for k in ("server_cpu_s", "redis_cpu_s", "requests", "duration_us")
        }
        for kind in variants
    }
    first, second = variants  # the ratios: the second variant of the first round over the first
    a, b = per[first], per[second]
    for label, key in (("Redis", "redis_cpu_s"), ("API", "server_cpu_s")):
        report.ratio(
            f"{what}: {label} CPU per reservation, {second} / {first}",
            round(b[key] / b["requests"] * 1e6, 1),
            round(a[key] / a["requests"] * 1e6, 1),
        )
    report.ratio(
        f"{what}: requests/s, {second} / {first}",
        round(b["requests"] / (b["duration_us"] / 1e6)),
        round(a["requests"] / (a["duration_us"] / 1e6)),
    )


def _with_worker(
    binary: str,
    settings: FlashsaleSettings,
    s: Settings,
    redis_url: str,
    tokens: Path,
    runs: list[tuple[str, str]],
) -> dict[str, Any]:
    """PostgreSQL and Kafka started, ``flashsale worker`` running: it drains what the runs before left in
    the streams, then the runs go, every request a 201, while it drains theirs; at the end the streams are
    drained and ``flashsale reconcile`` compares Redis, PostgreSQL and Kafka."""
    out: dict[str, Any] = {"runs": {}}
    with write_behind_stack(redis_url, None, None) as stack:
        out["backlog_events"] = stack.lag().pending
        with stack.worker():
            caught_up, waited = stack.wait_drained(900)
            out["caught_up"], out["caught_up_s"] = caught_up, round(waited, 1)
            with _serve(settings, s.server_workers) as (url, server):
                for name, sku in runs:
                    out["runs"][name] = _saturated(binary, url, server, redis_url, tokens, sku, s)
            drained, waited = stack.wait_drained(600)
            out["drained"], out["drained_s"] = drained, round(waited, 1)
        out["reconcile_exit"], _ = stack.reconcile()
    return out
