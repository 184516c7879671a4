"""Scenario 7: a whole sale end to end, with the write-behind worker running as its own process.

A crowd of distinct users tries to reserve (more attempts than units, over several SKUs); then, of the
reservations made, 70% check out and pay (begin_checkout + confirm), 20% are released, 10% are left to
expire (a short TTL; the worker's sweeper ends them). When the worker has drained every event into
PostgreSQL and Kafka, ``flashsale reconcile`` must report no drift, and Redis's counters must say exactly
what happened: sold == orders confirmed, nothing reserved, available == total - sold.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench import plots
from bench.checks import invariant_1, sku_counters
from bench.load import LoadResult, async_engine, drive, run
from bench.options import Options
from bench.report import Report
from bench.stack import Stack, write_behind_stack
from engine import AsyncEngine, Reservation, SaleSettings


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
            return cls(10, 100, 1_500, 200, 4_000, 20.0, 11, options.loop)
        return cls(50, 1_000, 75_000, 1000, 8_000, 60.0, 11, options.loop)


def _fate(index: int) -> str:
    """Of every 10 reservations: 7 check out, 2 are released, 1 is left to expire."""
    bucket = index % 10
    return "checkout" if bucket < 7 else "release" if bucket < 9 else "expire"


async def _sale(stack: Stack, s: Settings, run_id: str, report: Report) -> dict[str, Any]:
    engine = async_engine(str(stack.settings.redis_url))
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

    async def reserve(i: int) -> None:
        held.append(await engine.reserve(skus[picks[i]], f"user-{run_id}-{i}"))

    phases: dict[str, LoadResult] = {}
    try:
        started = time.perf_counter()
        phases["reserve"] = await drive(s.clients, s.attempts, reserve, max_seconds=s.max_seconds)
        held.sort(key=lambda r: r.id)
        fates = {r.id: _fate(i) for i, r in enumerate(held)}
        checkout = [r for r in held if fates[r.id] == "checkout"]
        release = [r for r in held if fates[r.id] == "release"]

        async def pay(i: int) -> None:
            r = checkout[i]
            order = await engine.begin_checkout(r.id, r.user, "card", idempotency_key=f"co-{r.id}")
            await engine.confirm(order.id, r.user, f"tx-{i}", idempotency_key=f"pay-{r.id}")

        async def give_back(i: int) -> None:
            await engine.release(release[i].id, release[i].user)

        phases["checkout"], phases["release"] = await asyncio.gather(
            drive(s.clients, len(checkout), pay, max_seconds=s.max_seconds),
            drive(s.clients, len(release), give_back, max_seconds=s.max_seconds),
        )
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
    finally:
        await engine.close()

    expected_holds = _expected_holds(picks[: phases["reserve"].attempts], s)
    report.check(
        "every SKU sold exactly min(units, attempts on it) holds",
        phases["reserve"].successes == expected_holds,
        f"{phases['reserve'].successes} reservations, expected {expected_holds}",
    )
    for name, phase in phases.items():
        allowed = {"ok", "OUT_OF_STOCK"} if name == "reserve" else {"ok"}
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
    return {
        "phases": {name: phase.as_dict() for name, phase in phases.items()},
        "cdf": {name: phase.latencies.cdf() for name, phase in phases.items()},
        "reservations": len(held),
        "checkouts": len(checkout),
        "releases": len(release),
        "left_to_expire": len(held) - len(checkout) - len(release),
        "expire_wait_s": round(expire_s, 2),
        "sale_s": round(sale_s, 2),
        "sold": sum(confirmed.values()),
    }


def _expected_holds(picks: list[int], s: Settings) -> int:
    per_sku = [0] * s.skus
    for p in picks:
        per_sku[p] += 1
    return sum(min(s.units, n) for n in per_sku)


async def _confirmed_per_sku(engine: AsyncEngine, paid: list[Reservation]) -> dict[str, int]:
    """Units of CONFIRMED orders per SKU, read back from Redis reservation by reservation."""
    per_sku: dict[str, int] = {}
    reservations = await asyncio.gather(*(engine.get_reservation(r.id) for r in paid))
    for r in reservations:
        if r.status == "CONFIRMED":
            per_sku[r.sku] = per_sku.get(r.sku, 0) + r.quantity
    return per_sku


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("full-sale", asdict(s))
    with write_behind_stack(options.redis_url, options.database_url, options.kafka_bootstrap) as stack:
        report.servers["redis"] = "launcher" if options.redis_url is None else "given"
        with stack.worker():
            figures = run(_sale(stack, s, options.run_id, report), s.loop)
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
            f"exit {code}; drifts: {str(reconciled.get('drifts', reconciled))[:300]}",
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
    report.notes.append(
        "checkout = begin_checkout + confirm through the engine (one call timed as both); "
        "HTTP end to end is the http scenario"
    )
    if options.plots:
        report.plots.append(
            plots.latency_cdf(
                {f"flashsale {name}": cdf for name, cdf in figures["cdf"].items()},
                "Full sale: latency per phase",
                options.results_dir,
                "full-sale-latency-cdf.png",
            )
        )
    return report
