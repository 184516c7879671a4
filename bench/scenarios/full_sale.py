"""Scenario 7: a whole sale end to end, with the write-behind worker running as its own process.

A crowd of distinct users (more than the units, over several SKUs) each tries to reserve; a customer who
got a unit at once checks out and pays (begin_checkout + confirm, 7 in 10), releases it (2 in 10) or walks
away and lets it expire (1 in 10; a short TTL, the worker's sweeper ends it). Units given back go on sale
again to later customers. When the worker has drained every event into
PostgreSQL and Kafka, ``flashsale reconcile`` must report no drift, and Redis's counters must say exactly
what happened: sold == orders confirmed, nothing reserved, available == total - sold. The CPU the customer
journeys cost the client process, the worker and Redis is reported per journey and per engine call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from flashsale.bench import plots
from flashsale.bench.checks import invariant_1, sku_counters
from flashsale.bench.load import LoadResult, async_engine, drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import process_cpu_seconds, redis_version
from flashsale.bench.stack import Stack, write_behind_stack
from flashsale.bench.stats import us_per_call
from flashsale.engine import AsyncEngine, Reservation, SaleSettings


@dataclass
class Settings:
    skus: int
    units: int
    attempts: int
    clients: int
    reservation_ttl_ms: int
    max_seconds: float
    seed: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        if options.quick:
            return cls(10, 100, 1_500, 200, 3_000, 20.0, 11, options.loop)
        return cls(50, 1_000, 75_000, 1000, 10_000, 60.0, 11, options.loop)


def _fate(index: int) -> str:
    """Of every 10 customers: 7 check out, 2 release their unit, 1 lets it expire."""
    bucket = index % 10
    return "checkout" if bucket < 7 else "release" if bucket < 9 else "expire"


async def _sale(stack: Stack, worker_pid: int, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    url = str(stack.settings.redis_url)
    engine = async_engine(url)
    await engine.load_scripts()
    skus = [f"sale-{run_id}-{i}" for i in range(s.skus)]
    await asyncio.gather(
        *(
            engine.load_sale(
                SaleSettings(
                    sku=sku,
                    name=f"Flash item {i}",
                    total=s.units,
                    price_cents=4999,
                    flash_price_cents=1999,
                    reservation_ttl_ms=s.reservation_ttl_ms,
                )
            )
            for i, sku in enumerate(skus)
        )
    )
    rng = random.Random(s.seed)
    picks = [rng.randrange(s.skus) for _ in range(s.attempts)]
    held: list[Reservation] = []
    # Each customer's journey: reserve, then at once pay (7 in 10), give the unit back (2) or walk away (1).
    steps = {name: LoadResult(s.clients, 0, 0.0, 0.0) for name in ("reserve", "checkout", "release")}
    paid: list[Reservation] = []
    planned: Counter[str] = Counter()

    async def step(name: str, action: Any) -> None:
        start = time.perf_counter_ns()
        try:
            await action
            steps[name].outcomes["ok"] += 1
        except Exception as error:  # counted under its code; the check wants none
            steps[name].outcomes[getattr(error, "code", None) or f"error:{type(error).__name__}"] += 1
        steps[name].latencies.add(time.perf_counter_ns() - start)
        steps[name].attempts += 1

    async def pay(r: Reservation, i: int) -> None:
        order = await engine.begin_checkout(r.id, r.user, "card", idempotency_key=f"co-{r.id}")
        await engine.confirm(order.id, r.user, f"tx-{i}", idempotency_key=f"pay-{r.id}")
        paid.append(r)

    async def customer(i: int) -> None:
        start = time.perf_counter_ns()
        try:
            r = await engine.reserve(skus[picks[i]], f"user-{run_id}-{i}")
        finally:
            steps["reserve"].latencies.add(time.perf_counter_ns() - start)
            steps["reserve"].attempts += 1
        steps["reserve"].outcomes["ok"] += 1
        held.append(r)
        fate = _fate(i)
        planned[fate] += 1
        if fate == "checkout":
            await step("checkout", pay(r, i))
        elif fate == "release":
            await step("release", engine.release(r.id, r.user))

    phases: dict[str, LoadResult] = {}
    try:
        started = time.perf_counter()
        worker_cpu = process_cpu_seconds(worker_pid)
        journeys = await drive(s.clients, s.attempts, customer, max_seconds=s.max_seconds, redis_url=url)
        worker_cpu = process_cpu_seconds(worker_pid) - worker_cpu
        phases["customer journey"] = journeys
        for name, result in steps.items():
            result.seconds = journeys.seconds
            if name == "reserve":  # its refusals were counted by the journey
                result.outcomes.update({k: v for k, v in journeys.outcomes.items() if k != "ok"})
            phases[name] = result
        checkout = paid
        # The rest expire: wait out their TTL, then for the worker's sweeper to end them.
        expire_started = time.perf_counter()
        while True:
            counters = await asyncio.gather(*(sku_counters(engine, sku) for sku in skus))
            if all(c["reserved"] == 0 for c in counters) or time.perf_counter() - expire_started > 60:
                break
            await asyncio.sleep(0.2)
        expire_s = time.perf_counter() - expire_started
        sale_s = time.perf_counter() - started
        confirmed = await _confirmed_per_sku(engine, checkout)
        statuses = await _statuses(engine, held)
    finally:
        await engine.close()

    # Released and expired units go back on sale, so a SKU may hold more reservations than units over the
    # sale, but never more than its units plus those given back.
    made: Counter[str] = Counter(r.sku for r in held)
    returned: Counter[str] = Counter(r.sku for r in held if statuses[r.id] in ("CANCELLED", "EXPIRED"))
    oversold = [sku for sku in skus if made[sku] > s.units + returned[sku]]
    report.check(
        "no SKU held more than its units plus the units given back",
        not oversold,
        f"{len(held)} reservations over {s.skus} SKUs of {s.units} units; over: {oversold[:3]}",
    )
    expected_status = {"checkout": "CONFIRMED", "release": "CANCELLED", "expire": "EXPIRED"}
    final = Counter(statuses.values())
    report.check(
        "every reservation ended as its customer chose: CONFIRMED, CANCELLED or EXPIRED",
        all(final[expected_status[fate]] == n for fate, n in planned.items())
        and sum(final.values()) == len(held),
        f"planned {dict(planned)}, final statuses {dict(final)}",
    )
    for name, phase in phases.items():
        allowed = {"ok", "OUT_OF_STOCK"} if name in ("reserve", "customer journey") else {"ok"}
        report.check(
            f"{name}: every call answered as expected",
            set(phase.outcomes) <= allowed,
            str(dict(phase.outcomes)),
        )
    wrong = []
    for sku, c in zip(skus, counters, strict=True):
        ok, detail = invariant_1(c)
        if (
            not ok
            or c["reserved"] != 0
            or c["sold"] != confirmed.get(sku, 0)
            or c["available"] != c["total"] - c["sold"]
        ):
            wrong.append(f"{sku}: {detail}, confirmed {confirmed.get(sku, 0)}")
    report.check(
        "Redis after the sale: sold == confirmed orders, nothing reserved, invariant 1",
        not wrong,
        "; ".join(wrong[:3]) or f"{len(skus)} SKUs, {sum(confirmed.values())} units sold",
    )
    calls = sum(phases[name].attempts for name in ("reserve", "release")) + 2 * phases["checkout"].attempts
    redis_cpu = journeys.redis_cpu.total if journeys.redis_cpu else 0.0
    return {
        "cpu": {
            "journeys": journeys.attempts,
            "engine_calls": calls,
            "client_cpu_s": round(journeys.client_cpu_s, 3),
            "worker_cpu_s": round(worker_cpu, 3),
            "redis_cpu_s": round(redis_cpu, 3),
            **{
                f"{who}_us_per_{per}": round(us_per_call(cpu, count), 2)
                for who, cpu in (
                    ("client", journeys.client_cpu_s),
                    ("worker", worker_cpu),
                    ("redis", redis_cpu),
                )
                for per, count in (("journey", journeys.attempts), ("call", calls))
            },
        },
        "phases": {name: phase.as_dict() for name, phase in phases.items()},
        "cdf": {name: phase.latencies.cdf() for name, phase in phases.items()},
        "reservations": len(held),
        "checkouts": len(checkout),
        "releases": phases["release"].successes,
        "left_to_expire": len(held) - len(checkout) - phases["release"].successes,
        "planned": dict(planned),
        "expire_wait_s": round(expire_s, 2),
        "sale_s": round(sale_s, 2),
        "sold": sum(confirmed.values()),
    }


async def _read_back(engine: AsyncEngine, held: list[Reservation]) -> list[Reservation]:
    """The reservations as Redis has them now, a thousand reads at a time: each read takes a pooled
    connection, and tens of thousands waiting at once outlast the pool's timeout on a busy machine."""
    found: list[Reservation] = []
    for start in range(0, len(held), 1000):
        found += await asyncio.gather(*(engine.get_reservation(r.id) for r in held[start : start + 1000]))
    return found


async def _statuses(engine: AsyncEngine, held: list[Reservation]) -> dict[str, str]:
    """Each reservation's final status, read back from Redis."""
    return {r.id: str(r.status) for r in await _read_back(engine, held)}


async def _confirmed_per_sku(engine: AsyncEngine, paid: list[Reservation]) -> dict[str, int]:
    """Units of CONFIRMED orders per SKU, read back from Redis reservation by reservation."""
    per_sku: dict[str, int] = {}
    for r in await _read_back(engine, paid):
        if r.status == "CONFIRMED":
            per_sku[r.sku] = per_sku.get(r.sku, 0) + r.quantity
    return per_sku


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("full-sale", asdict(s))
    with write_behind_stack(
        options.redis_url, options.database_url, options.kafka_bootstrap, server=options.server
    ) as stack:
        report.servers["redis"] = redis_version(str(stack.settings.redis_url))
        with stack.worker() as worker:
            figures = run(_sale(stack, worker.pid, s, options.run_id, report), s.loop)
            drained, drain_s = stack.wait_drained(timeout_s=120)
        report.check(
            "the worker drained every event into PostgreSQL and Kafka",
            drained,
            f"waited {drain_s:.1f} s after the sale",
        )
        code, reconciled = stack.reconcile()
        report.check(
            "flashsale reconcile: no drift (exit 0)",
            code == 0,
            f"exit {code}; drift findings: {reconciled.get('drift_count', reconciled)}",
        )
    figures["drain_after_sale_s"] = round(drain_s, 2)
    figures["reconcile"] = {"exit_code": code, "report": reconciled}
    report.figures = figures
    rows = []
    for name, phase in figures["phases"].items():
        lat = phase["latency"]
        rows.append(
            [
                name,
                phase["attempts"],
                phase["outcomes"].get("ok", 0),
                round(phase["attempts_per_s"]),
                lat["p50_ms"],
                lat["p99_ms"],
            ]
        )
    report.table(
        f"{s.skus} SKUs × {s.units:,} units, {s.attempts:,} users, TTL {s.reservation_ttl_ms // 1000} s",
        ["phase", "calls", "succeeded", "calls/s", "p50 ms", "p99 ms"],
        rows,
    )
    report.table(
        "Outcome",
        [
            "reservations",
            "checked out",
            "released",
            "left to expire",
            "sold",
            "expiry wait s",
            "drain after sale s",
            "reconcile exit",
        ],
        [
            [
                figures["reservations"],
                figures["checkouts"],
                figures["releases"],
                figures["left_to_expire"],
                figures["sold"],
                figures["expire_wait_s"],
                figures["drain_after_sale_s"],
                code,
            ]
        ],
    )
    c = figures["cpu"]
    report.table(
        f"CPU during the customer journeys: {c['journeys']:,} journeys, {c['engine_calls']:,} engine calls "
        "(reserve, begin_checkout + confirm, release)",
        ["per", "client µs", "worker µs", "redis µs"],
        [
            [per, c[f"client_us_per_{key}"], c[f"worker_us_per_{key}"], c[f"redis_us_per_{key}"]]
            for per, key in (("customer journey", "journey"), ("engine call", "call"))
        ],
    )
    report.notes.append(
        "a customer journey is reserve, then at once pay or release (or walk away); calls/s are per "
        "second of the whole sale, the phases running side by side. checkout = begin_checkout + confirm "
        "through the engine, timed together; "
        "HTTP end to end is the http scenario"
    )
    if options.plots:
        report.plots.append(
            plots.latency_cdf(
                {
                    f"flashsale {name}": cdf
                    for name, cdf in figures["cdf"].items()
                    if name != "customer journey"
                },
                "Full sale: latency per phase",
                options.results_dir,
                "full-sale-latency-cdf.png",
            )
        )
    return report
