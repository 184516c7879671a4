"""Once drained, PostgreSQL and Kafka hold exactly what Redis did, and a replay of the log changes nothing."""

from __future__ import annotations

import time

import psycopg
import redis
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.events import effect
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, read_lag, total_lag
from writeback_checks import (
    Shop,
    all_events,
    assert_kafka_holds_every_event,
    assert_postgres_equals_redis,
    postgres_snapshot,
)


def test_after_a_burst_postgres_and_kafka_equal_redis(engine: Engine, settings: Settings, shop: Shop) -> None:
    shop.open()
    with WorkerThread(settings, WorkerOptions(trim=False, sweep=False)) as worker:
        shop.burst(customers=900, threads=6)
        assert worker.wait_drained(timeout_s=60)
    events = all_events(engine)
    assert len(events) > 2000
    assert {e.type for e in events} >= {
        "sale_loaded", "reserved", "released", "checkout_started", "checkout_failed", "confirmed",
        "order_cancelled", "order_fulfilled", "restocked",
    }  # fmt: skip
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    assert_kafka_holds_every_event(settings, events, exactly_once=True)
    with psycopg.connect(str(settings.database_url)) as conn:
        applied = sum(row[0] for row in conn.execute("SELECT applied_events FROM stream_offsets"))
        versions = sum(row[0] for row in conn.execute("SELECT version FROM inventory"))
    assert applied == len(events)
    changes = [effect(e) for e in events]
    touched = [c for c in changes if c.available or c.reserved or c.sold or c.total or c.product is not None]
    assert versions == len(touched)  # one version step per event that changed a SKU's row


def test_the_sweeper_expires_holds_and_postgres_follows(
    engine: Engine, settings: Settings, shop: Shop
) -> None:
    shop.open(ttl_ms=1000)
    holds = [engine.reserve(shop.skus[i % 3], f"late-{i}") for i in range(12)]
    shop.reservations.update(r.id for r in holds)
    time.sleep(1.1)  # past every deadline: only the sweeper can end them now (nobody calls reserve)
    with WorkerThread(settings, WorkerOptions()) as worker:
        deadline = time.monotonic() + 10
        while worker.stats.expired < len(holds) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.stats.expired == len(holds)
        assert worker.wait_drained(timeout_s=30)
    assert {engine.get_reservation(r.id).status.value for r in holds} == {"EXPIRED"}
    assert_postgres_equals_redis(engine, str(settings.database_url), shop)
    client = redis.Redis.from_url(str(settings.redis_url), decode_responses=True)
    # Trimmed below what both sinks took, keeping only the entry at the floor (a takeover checks it is there).
    with psycopg.connect(str(settings.database_url)) as conn:
        applied = dict(conn.execute("SELECT partition, applied_id FROM stream_offsets").fetchall())
    for p in range(16):
        entries = client.xrange(engine.keys.partition(p).events())
        assert [stream_id for stream_id, _ in entries] == (
            [applied[p]] if applied.get(p, "0-0") != "0-0" else []
        )
    client.close()


def test_replaying_every_stream_from_the_start_changes_nothing(
    engine: Engine, settings: Settings, shop: Shop
) -> None:
    shop.open()
    options = WorkerOptions(trim=False, sweep=False)
    with WorkerThread(settings, options) as worker:
        shop.burst(customers=300, threads=3)
        assert worker.wait_drained(timeout_s=60)
    before = postgres_snapshot(str(settings.database_url))
    events = all_events(engine)

    # Forget what the sinks took, as if Redis's records were lost: the worker reads every stream again.
    client = redis.Redis.from_url(str(settings.redis_url))
    for p in range(settings.partitions):
        client.delete(engine.keys.partition(p).writeback_progress())
    assert total_lag(read_lag(client, settings.keyspace())).pending == len(events)
    with WorkerThread(settings, options) as worker:
        assert worker.wait_drained(timeout_s=60)
        assert worker.stats.applied_events == 0
        assert worker.stats.published_events == len(events)
    client.close()

    assert postgres_snapshot(str(settings.database_url)) == before
    # Kafka got everything a second time (at least once); consumers drop repeats by event id.
    assert_kafka_holds_every_event(settings, events, exactly_once=False)


def test_a_sale_loaded_before_the_worker_ran_becomes_a_product(engine: Engine, settings: Settings) -> None:
    engine.load_sale(
        SaleSettings(sku="LAMP", name="Desk lamp", total=3, price_cents=5000, flash_price_cents=2500)
    )
    engine.load_sale(SaleSettings(sku="LAMP", paused=True, starts_at=1_000, ends_at=9_000_000_000_000))
    engine.restock("LAMP", 7)
    with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
        assert worker.wait_drained(timeout_s=30)
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute(
            "SELECT p.name, p.base_price_cents, p.flash_sale_price_cents, p.total_inventory, p.is_active, "
            "(extract(epoch FROM p.starts_at) * 1000)::bigint, i.total_count, i.available_count, i.version "
            "FROM products p JOIN inventory i USING (sku_id) WHERE sku_id = 'LAMP'"
        ).fetchone()
    assert row == ("Desk lamp", 5000, 2500, 10, False, 1000, 10, 10, 3)
