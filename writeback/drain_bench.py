"""Measures the worker's drain rate: a pre-filled backlog of stream events into PostgreSQL + Kafka.

    python -m writeback.drain_bench                 # 100k events, embedded Redis, PostgreSQL and Tansu
    python -m writeback.drain_bench --events 20000 --batch-size 2000 --json

Fills the streams first (no worker running): customers reserve one unit each and half of them check
out and pay, so the backlog holds reserved, checkout_started and confirmed events over many SKUs.
Then one worker starts and the clock runs until every partition is in PostgreSQL and acknowledged by
Kafka. Servers come from FLASHSALE_* URLs when set, else embedded ones are started (and stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import redis

from engine import AsyncEngine, SaleSettings
from flashsale.launcher import KafkaBroker, PostgresServer, RedisServer
from flashsale.settings import Settings
from writeback.database import migrate
from writeback.lag import read_lag, total_lag
from writeback.worker import WorkerOptions, WorkerThread


async def fill_backlog(settings: Settings, events: int, skus: int) -> int:
    """Appends about ``events`` events through the engine; returns how many the streams hold."""
    engine = AsyncEngine.from_url(str(settings.redis_url), settings.engine_config())
    await engine.load_scripts()
    names = [f"BENCH-{i:03d}" for i in range(skus)]
    for sku in names:
        await engine.load_sale(
            SaleSettings(sku=sku, total=1_000_000, flash_price_cents=1999, reservation_ttl_ms=3_600_000)
        )
    # Two customers in three pay: about 2.3 events per customer.
    customers = int(events / (1 + 2 * 2 / 3))

    async def customer(i: int) -> None:
        user = f"bench-{i}"
        reservation = await engine.reserve(names[i % skus], user)
        if i % 3:
            order = await engine.begin_checkout(reservation.id, user, "card")
            await engine.confirm(order.id, user, f"tx-{i}")

    step = 2000
    for start in range(0, customers, step):
        await asyncio.gather(*(customer(i) for i in range(start, min(start + step, customers))))
    await engine.close()
    client = redis.Redis.from_url(str(settings.redis_url))
    total = sum(int(client.xlen(p.events())) for p in engine.keys.all())
    client.close()
    return total


def measure(settings: Settings, events: int, skus: int, batch_size: int) -> dict[str, Any]:
    migrate(str(settings.database_url))
    started = time.perf_counter()
    backlog = asyncio.run(fill_backlog(settings, events, skus))
    fill_s = time.perf_counter() - started

    client = redis.Redis.from_url(str(settings.redis_url))
    pending = total_lag(read_lag(client, settings)).pending
    options = WorkerOptions(sweep=False, batch_size=batch_size)
    with WorkerThread(settings, options) as worker:
        started = time.perf_counter()
        drained = worker.wait_drained(timeout_s=600, poll_s=0.02)
        drain_s = time.perf_counter() - started
        stats = worker.stats
    client.close()
    return {
        "backlog_events": backlog,
        "pending_before": pending,
        "drained": drained,
        "drain_seconds": round(drain_s, 3),
        "events_per_second": round(backlog / drain_s),
        "kafka_messages": stats.published_messages,
        "batches": stats.batches,
        "batch_size": batch_size,
        "partitions": settings.partitions,
        "skus": skus,
        "fill_seconds": round(fill_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="size of the backlog (default 100000)")
    parser.add_argument("--skus", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="events per batch (default: settings)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    base = Settings.from_env()
    with contextlib.ExitStack() as stack:
        redis_url = base.redis_url or stack.enter_context(RedisServer()).url
        database_url = base.database_url or stack.enter_context(PostgresServer()).url
        bootstrap = base.kafka_bootstrap or stack.enter_context(KafkaBroker()).bootstrap
        settings = Settings.from_env(
            redis_url=redis_url, database_url=database_url, kafka_bootstrap=bootstrap
        )
        result = measure(settings, args.events, args.skus, args.batch_size or settings.worker_batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"drained {result['backlog_events']} events into PostgreSQL + Kafka "
            f"({result['kafka_messages']} messages) in {result['drain_seconds']} s: "
            f"{result['events_per_second']} events/s (batch {result['batch_size']}, "
            f"{result['partitions']} partitions, {result['skus']} SKUs)"
        )
    return 0 if result["drained"] else 1


if __name__ == "__main__":
    sys.exit(main())
