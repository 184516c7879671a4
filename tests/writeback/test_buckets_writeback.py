"""A bucketed SKU (engine/buckets.py) in PostgreSQL and Kafka: one inventory row per SKU, summed over its
buckets, nothing moving once drained; every transfer on the inventory topic, keyed by SKU, each bucket's
messages in its stream's order; and the sweeper finishing a transfer that a killed process left cut."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from flashsale.engine import Engine, FlashSaleError, Reservation, SaleSettings
from flashsale.engine.keys import home_bucket
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread
from flashsale.writeback.batch import Batch
from flashsale.writeback.postgres import apply_batch, ensure_offset, unapplied
from writeback_checks import all_events, read_topic


def _inventory(database_url: str, sku: str) -> tuple[int, ...]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT total_count, available_count, reserved_count, sold_count, moving_count FROM inventory "
            "WHERE sku_id = %s",
            (sku,),
        ).fetchall()
        total = conn.execute("SELECT total_inventory FROM products WHERE sku_id = %s", (sku,)).fetchone()
        holds = conn.execute(
            "SELECT count(*) FROM reservations WHERE sku_id = %s AND status = 'RESERVED'", (sku,)
        ).fetchone()
    assert len(rows) == 1  # one row per SKU, whatever its buckets
    assert total is not None
    assert holds is not None
    return (*rows[0], total[0], holds[0])


@pytest.mark.cluster
def test_a_bucketed_sale_drains_into_one_inventory_row_and_every_transfer_reaches_kafka(
    engine: Engine, settings: Settings
) -> None:
    sku, buckets = "HOTPG", 4
    engine.load_sale(SaleSettings(sku=sku, total=120), buckets=buckets)
    # Most buyers homed on bucket 0: the other buckets' units must move there.
    users = [u for u in (f"pg-{n}" for n in range(2000)) if home_bucket(u, buckets) == 0][:150]

    def buy(user: str) -> Reservation | FlashSaleError:
        try:
            return engine.reserve(sku, user)
        except FlashSaleError as error:
            return error

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(buy, users))
    won = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(won) == 120
    for r in won[:20]:
        engine.release(r.id, r.user)
    engine.restock(sku, 5)
    with WorkerThread(settings, WorkerOptions(trim=False, sweep=False)) as worker:
        assert worker.wait_drained(timeout_s=60)
    sale = engine.get_sale(sku)
    assert (sale.total, sale.available, sale.reserved, sale.sold, sale.moving) == (125, 25, 100, 0, 0)
    assert _inventory(str(settings.database_url), sku) == (125, 25, 100, 0, 0, 125, 100)

    events = [e for e in all_events(engine) if e.sku == sku]
    transfers = [e for e in events if e.type in ("transferred_out", "transferred_in")]
    assert {e.type for e in transfers} == {"transferred_out", "transferred_in"}
    received = [
        m for m in read_topic(str(settings.kafka_bootstrap), settings.topic_inventory) if m["sku_id"] == sku
    ]
    assert all(m["_key"] == sku for m in received)
    assert {m["event_id"] for m in received} >= {e.id for e in transfers}
    moves = [m for m in received if m.get("transfer_id")]
    assert sum(m["moving_delta"] for m in moves) == 0
    assert all(m["available_delta"] == -m["moving_delta"] for m in moves)
    # Each bucket's messages in its stream's order (buckets interleave: documented).
    order = {e.id: i for i, e in enumerate(events)}
    per_partition: dict[str, list[int]] = defaultdict(list)
    for m in received:
        per_partition[m["event_id"].split("-", 1)[0]].append(order[m["event_id"]])
    assert all(ids == sorted(ids) for ids in per_partition.values())


_HAMMER = textwrap.dedent(
    """
    import random, sys
    from flashsale.engine import Engine, buckets
    engine = Engine.from_url(sys.argv[1], cluster=sys.argv[2] == "1")
    engine.load_scripts()
    print("ready", flush=True)
    while True:  # the engine's own transfer steps, between random buckets, one after another
        giver, receiver = random.sample(range(int(sys.argv[4])), 2)
        engine._drive(buckets._move(engine.ops, sys.argv[3], giver, receiver, 3))
    """
)


def test_a_process_killed_mid_transfer_loses_nothing_once_the_sweeper_ran(
    engine: Engine, settings: Settings, on_cluster: bool
) -> None:
    sku, buckets, total = "KILLB", 8, 800
    engine.load_sale(SaleSettings(sku=sku, total=total), buckets=buckets)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cut = 0
    for attempt in range(6):
        hammer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HAMMER,
                str(settings.redis_url),
                "1" if on_cluster else "0",
                sku,
                str(buckets),
            ],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert hammer.stdout is not None
        assert hammer.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.05 * attempt)
        hammer.send_signal(signal.SIGKILL)
        hammer.wait()
        cut += sum(
            engine.redis.hlen(engine.keys.partition(p).transfers_out()) for p in range(settings.partitions)
        )
    assert cut >= 1  # at least one kill left a transfer withdrawn and not ended
    # Whatever step each kill cut: the sweeper (grace 0 here) finishes every transfer, exactly once.
    for p in range(settings.partitions):
        engine.finish_transfers(p, grace_ms=0)
    for p in range(settings.partitions):
        assert engine.redis.hlen(engine.keys.partition(p).transfers_out()) == 0
    sale = engine.get_sale(sku)
    assert sale.moving == 0
    assert sale.available + sale.reserved + sale.sold == sale.total
    per_bucket = engine.bucket_sales(sku)
    assert sum(b.available for b in per_bucket) == sale.available
    # The log agrees: every withdrawal was deposited once.
    events = [e for e in all_events(engine) if e.sku == sku]
    outs = {e.transfer_id: e.quantity for e in events if e.type == "transferred_out"}
    ins = [e.transfer_id for e in events if e.type == "transferred_in"]
    assert len(ins) == len(set(ins))
    assert set(ins) == set(outs)
    assert len(outs) > 50


@pytest.mark.parametrize("bucket_zero_first", [True, False])
def test_a_buckets_settings_copy_creates_the_product_when_missing_and_never_changes_it(
    engine: Engine, settings: Settings, bucket_zero_first: bool
) -> None:
    """Each bucket's partition is applied on its own: whichever comes first, the product ends as bucket 0's
    sale_loaded says (its total, its name), never as a copy's (total 0)."""
    sku = "ORDERB"
    engine.load_sale(SaleSettings(sku=sku, name="Hot mug", total=40), buckets=4)
    partitions = [engine.keys.for_bucket(sku, b).index for b in range(4)]
    order = partitions if bucket_zero_first else partitions[::-1]

    async def apply_in_order() -> None:
        conn = await psycopg.AsyncConnection.connect(str(settings.database_url))
        try:
            for p in order:
                offset = await ensure_offset(conn, p)
                events = unapplied(engine.read_events(p, after=offset), offset)
                await apply_batch(conn, Batch.fold(p, events), offset)
        finally:
            await conn.close()

    asyncio.run(apply_in_order())
    with psycopg.connect(str(settings.database_url)) as conn:
        product = conn.execute(
            "SELECT name, total_inventory, buckets FROM products WHERE sku_id = %s", (sku,)
        ).fetchone()
    assert product == ("Hot mug", 40, 4)
    assert _inventory(str(settings.database_url), sku)[:5] == (40, 40, 0, 0, 0)
