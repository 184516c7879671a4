"""Scenario 6: the write-behind worker — how fast it drains, and how far it lags under a steady load.

The worker runs as its own process (``flashsale worker``), as in production, draining the Redis streams
into PostgreSQL and Kafka.
  A. Backlog: the streams are filled with no worker running; then the worker starts and the clock runs
     until PostgreSQL and Kafka hold every event: events drained per second.
  B. Steady load: with the worker running, reservations arrive at a fixed rate (open loop, each a new
     user) for a while; the lag (events not yet in both sinks, age of the oldest) is sampled throughout
     and until it is back to zero.
At the end ``flashsale reconcile`` must report no drift. Each phase also says what it cost in CPU: the
reserving client and Redis per reservation (A's fill), the worker and Redis per event drained (A's drain,
from its first progress, so the worker's start-up is left out), and all three per event under B.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from flashsale.bench import plots
from flashsale.bench.load import LoadResult, async_engine, drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import process_cpu_seconds, redis_cpu_seconds, redis_version
from flashsale.bench.stack import Stack, write_behind_stack
from flashsale.bench.stats import Latencies, us_per_call
from flashsale.engine import AsyncEngine, SaleSettings
from flashsale.writeback.lag import read_lag_async, total_lag


@dataclass
class Settings:
    skus: int
    backlog_events: int
    steady_rate: int
    steady_seconds: float
    sample_every_s: float
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(64, 20_000, 2_000, 8.0, 0.2, options.loop)
        return cls(64, 100_000, 3_000, 30.0, 0.25, options.loop)


async def _sample(client: aioredis.Redis, stack: Stack, t0: float) -> tuple[float, int, int]:
    lag = total_lag(await read_lag_async(client, stack.settings.keyspace()))
    return round(time.perf_counter() - t0, 3), lag.pending, lag.oldest_age_ms


async def _fill(engine: AsyncEngine, skus: list[str], events: int, tag: str, url: str) -> LoadResult:
    return await drive(
        500,
        events,
        lambda i: engine.reserve(skus[i % len(skus)], f"{tag}-{i}"),
        max_seconds=300,
        redis_url=url,
    )


class _Cpu:
    """The worker's and Redis's CPU seconds so far, read together (what a phase cost each)."""

    def __init__(self, worker_pid: int, redis_url: str) -> None:
        self.worker_pid, self.redis_url = worker_pid, redis_url

    def read(self) -> tuple[float, float]:
        return process_cpu_seconds(self.worker_pid), redis_cpu_seconds(self.redis_url)


async def _steady(
    engine: AsyncEngine, skus: list[str], rate: int, seconds: float, tag: str
) -> dict[str, Any]:
    """Open loop: reservations start on schedule whether or not earlier ones answered."""
    latencies = Latencies()
    failures = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal failures
        start = time.perf_counter_ns()
        try:
            await engine.reserve(skus[i % len(skus)], f"{tag}-{i}")
        except Exception:  # counted: the check wants none
            failures += 1
        latencies.add(time.perf_counter_ns() - start)

    started = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            task = asyncio.ensure_future(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*pending)
    return {
        "offered_per_s": rate,
        "sent": sent,
        "achieved_per_s": round(sent / (time.perf_counter() - started)),
        "failures": failures,
        "latency": latencies.summary(),
    }


def _per_event(cpu_s: tuple[float, float], events: int) -> dict[str, float]:
    return {
        "worker_cpu_s": round(cpu_s[0], 3),
        "redis_cpu_s": round(cpu_s[1], 3),
        "worker_us_per_event": round(us_per_call(cpu_s[0], events), 2),
        "redis_us_per_event": round(us_per_call(cpu_s[1], events), 2),
    }


async def _scenario(stack: Stack, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    url = str(stack.settings.redis_url)
    engine = async_engine(url)
    await engine.load_scripts()
    lag_client = aioredis.Redis.from_url(str(stack.settings.redis_url), decode_responses=True)
    skus = [f"wb-{run_id}-{i}" for i in range(s.skus)]
    await asyncio.gather(
        *(
            engine.load_sale(SaleSettings(sku=sku, total=10_000_000, reservation_ttl_ms=3_600_000))
            for sku in skus
        )
    )
    out: dict[str, Any] = {}
    try:
        # A. backlog, no worker yet
        fill = await _fill(engine, skus, s.backlog_events, f"a{run_id}", url)
        backlog = (await _sample(lag_client, stack, time.perf_counter()))[1]
        t0 = time.perf_counter()
        samples = []
        cpu_samples = []
        with stack.worker() as worker:
            cpu = _Cpu(worker.pid, url)
            while True:
                sample = await _sample(lag_client, stack, t0)
                samples.append(sample)
                cpu_samples.append(cpu.read())
                if sample[1] == 0 or sample[0] > 300:
                    break
                await asyncio.sleep(0.05)
            # From the last sample before any progress to empty: the worker process's start-up is left out
            # (conservatively: up to one sampling interval of idle time stays in).
            first = next(i for i, (_, pending, _) in enumerate(samples) if pending < backlog)
            started = samples[max(first - 1, 0)][0]
            drain_s = samples[-1][0] - started
            drain_cpu = (
                cpu_samples[-1][0] - cpu_samples[max(first - 1, 0)][0],
                (cpu_samples[-1][1] - cpu_samples[max(first - 1, 0)][1]),
            )
            out["fill"] = fill.as_dict()
            out["backlog"] = {
                "events": backlog,
                **_per_event(drain_cpu, backlog),
                "fill_s": round(fill.seconds, 2),
                "worker_first_progress_s": started,
                "drain_s": round(drain_s, 3),
                "events_per_s": round(backlog / drain_s) if drain_s > 0 else 0,
                "events_per_s_with_worker_start": round(backlog / samples[-1][0]),
                "drained": samples[-1][1] == 0,
            }
            report.check(
                "backlog: the worker drained every event",
                samples[-1][1] == 0,
                f"{backlog} events, {samples[-1][0]:.1f} s after the worker process started",
            )

            # B. steady load with the worker running
            t0 = time.perf_counter()
            lag_samples: list[tuple[float, int, int]] = []

            load_done = threading.Event()

            def watch() -> None:
                # In a thread with its own connection, so samples stay on time however busy the load's
                # event loop is; during the load, then until the lag is back to zero (or a minute passed).
                while True:
                    lag = stack.lag()
                    sample = (round(time.perf_counter() - t0, 3), lag.pending, lag.oldest_age_ms)
                    lag_samples.append(sample)
                    if load_done.is_set() and (sample[1] == 0 or sample[0] > s.steady_seconds + 60):
                        return
                    time.sleep(s.sample_every_s)

            watcher = threading.Thread(target=watch, name="lag-sampler", daemon=True)
            cpu_before, client_before = cpu.read(), time.process_time()
            watcher.start()
            try:
                steady = await _steady(engine, skus, s.steady_rate, s.steady_seconds, f"b{run_id}")
            finally:
                load_end = time.perf_counter() - t0
                load_done.set()
                await asyncio.to_thread(watcher.join)
            # Until the lag is back to zero: every event of the load made and drained.
            client_cpu, cpu_after = time.process_time() - client_before, cpu.read()
            steady_cpu = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
            steady.update(_per_event(steady_cpu, steady["sent"]))
            steady["client_cpu_s"] = round(client_cpu, 3)
            steady["client_us_per_event"] = round(us_per_call(client_cpu, steady["sent"]), 2)
        during = [x for x in lag_samples if x[0] <= load_end]
        caught_up = next((t for t, p, _ in lag_samples if t > load_end and p == 0), None)
        out["steady"] = {
            **steady,
            "load_seconds": round(load_end, 2),
            "max_pending": max((p for _, p, _ in during), default=0),
            "max_oldest_age_ms": max((a for _, _, a in during), default=0),
            "mean_pending": round(sum(p for _, p, _ in during) / max(len(during), 1), 1),
            "caught_up_s_after_load": round(caught_up - load_end, 2) if caught_up is not None else None,
            "samples": lag_samples,
        }
        report.check(
            "steady load: every reservation succeeded",
            steady["failures"] == 0,
            f"{steady['failures']} failures of {steady['sent']}",
        )
        report.check(
            "steady load: the lag returned to zero after the load",
            caught_up is not None,
            f"{caught_up and round(caught_up - load_end, 2)} s after the load stopped",
        )
    finally:
        await engine.close()
        await lag_client.aclose()
    return out


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("write-behind", asdict(s))
    with write_behind_stack(
        options.redis_url, options.database_url, options.kafka_bootstrap, server=options.server
    ) as stack:
        report.servers["redis"] = redis_version(str(stack.settings.redis_url))
        figures = run(_scenario(stack, s, options.run_id, report), s.loop)
        code, reconciled = stack.reconcile()
        report.check(
            "flashsale reconcile: no drift (exit 0)",
            code == 0,
            f"exit {code}; drift findings: {reconciled.get('drift_count', reconciled)}",
        )
    report.figures = figures
    b, st, fill = figures["backlog"], figures["steady"], figures["fill"]
    report.table(
        "A. Backlog drained by one worker process (PostgreSQL + Kafka)",
        [
            "events",
            "drain s",
            "events/s drained",
            "events/s incl. worker start-up",
            "worker µs/event",
            "redis µs/event",
        ],
        [
            [
                b["events"],
                b["drain_s"],
                b["events_per_s"],
                b["events_per_s_with_worker_start"],
                b["worker_us_per_event"],
                b["redis_us_per_event"],
            ]
        ],
    )
    report.ratio(
        "backlog drain rate / 20,000 events/s target",
        b["events_per_s"],
        20_000,
        "≥ 1",
        b["events_per_s"] >= 20_000,
    )
    report.table(
        f"B. Steady reserve load, {s.steady_rate:,}/s offered for {s.steady_seconds:.0f} s, worker running",
        [
            "achieved/s",
            "reserve p99 ms",
            "max pending events",
            "max oldest age ms",
            "mean pending",
            "caught up s after load",
        ],
        [
            [
                st["achieved_per_s"],
                st["latency"]["p99_ms"],
                st["max_pending"],
                st["max_oldest_age_ms"],
                st["mean_pending"],
                st["caught_up_s_after_load"],
            ]
        ],
    )
    report.table(
        "CPU µs per reservation (its one event): the client reserving, the worker draining, Redis for both",
        ["phase", "events", "client µs/event", "worker µs/event", "redis µs/event"],
        [
            [
                "A. backlog fill (reserves, no worker)",
                fill["attempts"],
                fill["client_us_per_call"],
                "—",
                fill["redis_us_per_call"],
            ],
            [
                "A. backlog drain (worker only)",
                b["events"],
                "—",
                b["worker_us_per_event"],
                b["redis_us_per_event"],
            ],
            [
                "B. steady load (reserves + drain, until caught up)",
                st["sent"],
                st["client_us_per_event"],
                st["worker_us_per_event"],
                st["redis_us_per_event"],
            ],
        ],
    )
    if options.plots:
        samples = st["samples"]
        report.plots.append(
            plots.over_time(
                {
                    "events pending": [(t, p) for t, p, _ in samples],
                    "oldest pending, ms": [(t, a) for t, _, a in samples],
                },
                f"Write-behind lag under {s.steady_rate:,} reservations/s (PostgreSQL + Kafka)",
                options.results_dir,
                "write-behind-lag.png",
                st["load_seconds"],
            )
        )
    return report
