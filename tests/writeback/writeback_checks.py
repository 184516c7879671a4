"""Load and checks of the write-behind tests: a shop that drives mixed load through the engine, and
comparisons of PostgreSQL and Kafka against Redis."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from confluent_kafka import Consumer, TopicPartition
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.events import Event
from flashsale.engine.settings import Settings
from flashsale.writeback.messages import Topics, messages


@dataclass
class Shop:
    """Drives a realistic mix of every operation on several SKUs from several threads at once."""

    engine: Engine
    skus: list[str]
    reservations: set[str] = field(default_factory=set)
    orders: set[str] = field(default_factory=set)
    operations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, total: int = 400, ttl_ms: int = 60_000) -> None:
        for i, sku in enumerate(self.skus):
            self.engine.load_sale(
                SaleSettings(
                    sku=sku,
                    name=f"Item {sku}",
                    total=total,
                    price_cents=2000 + i,
                    flash_price_cents=999 + i,
                    per_user_limit=2,
                    reservation_ttl_ms=ttl_ms,
                )
            )

    def customer(self, user: str, rng: random.Random) -> None:
        """One user's visit: reserve, then pay, fail and retry, release, or walk away."""
        e = self.engine
        sku = rng.choice(self.skus)
        try:
            r = e.reserve(sku, user, rng.choice((1, 1, 2)))
            self._note(reservation=r.id)
            roll = rng.random()
            if roll < 0.15:
                e.release(r.id, user)
            elif roll < 0.25:
                return  # abandoned: the hold stays until it expires
            else:
                o = e.begin_checkout(r.id, user, rng.choice(("card", "paypal")))
                self._note(order=o.id)
                if roll < 0.35:
                    e.fail_checkout(o.id, user, "CARD_DECLINED")
                    o = e.begin_checkout(r.id, user, "card")
                    self._note(order=o.id)
                e.confirm(o.id, user, f"tx-{user}")
                after = rng.random()
                if after < 0.1:
                    e.cancel_order(o.id, user)
                elif after < 0.3:
                    e.fulfil_order(o.id)
        except FlashSaleError:
            pass  # sold out, limit reached: refusals change nothing
        if rng.random() < 0.02:
            e.restock(sku, rng.randint(1, 5))
        with self._lock:
            self.operations += 1

    def _note(self, reservation: str | None = None, order: str | None = None) -> None:
        with self._lock:
            if reservation:
                self.reservations.add(reservation)
            if order:
                self.orders.add(order)

    def burst(self, customers: int, threads: int = 6, seed: int = 1) -> None:
        """``customers`` visits spread over ``threads`` threads, all at once."""
        per = customers // threads

        def run(t: int) -> None:
            rng = random.Random(seed * 1000 + t)
            for i in range(per):
                self.customer(f"u{seed}-{t}-{i}", rng)

        workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def keep_busy(self, stop: threading.Event, seed: int = 7, pace_s: float = 0.003) -> threading.Thread:
        """Background load until ``stop`` is set, one visit per ``pace_s`` at most (the machine is shared);
        every call must keep succeeding (the hot path never waits on the worker)."""

        def run() -> None:
            rng = random.Random(seed)
            i = 0
            while not stop.is_set():
                self.customer(f"bg{seed}-{i}", rng)
                i += 1
                time.sleep(pace_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


# -- checks ------------------------------------------------------------------------------------------------

_MS = "(extract(epoch FROM {0}) * 1000)::bigint"


def assert_postgres_equals_redis(engine: Engine, database_url: str, shop: Shop) -> None:
    """Every inventory row equals Redis's counters; every reservation and order row equals its Redis hash."""
    sales = {s.sku: s for s in engine.list_sales()}
    with psycopg.connect(database_url) as conn:
        inventory = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT sku_id, total_count, available_count, reserved_count, sold_count FROM inventory"
            )
        }
        products = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT sku_id, name, flash_sale_price_cents, total_inventory, per_user_limit FROM products"
            )
        }
        reservations = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT reservation_id, user_id, sku_id, quantity, status::text, order_id, "
                f"{_MS.format('created_at')}, {_MS.format('expires_at')} FROM reservations"
            )
        }
        orders = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT order_id, reservation_id, user_id, sku_id, quantity, total_price_cents, "
                "status::text, payment_method, failure_reason FROM orders"
            )
        }
    assert set(inventory) == set(sales)
    for sku, sale in sales.items():
        assert inventory[sku] == (sale.total, sale.available, sale.reserved, sale.sold), sku
        assert products[sku] == (sale.name, sale.flash_price_cents, sale.total, sale.per_user_limit), sku
    assert set(reservations) == shop.reservations
    for rid in shop.reservations:
        r = engine.get_reservation(rid)
        expected = (r.user, r.sku, r.quantity, r.status.value, r.order_id, r.created_at, r.expires_at)
        assert reservations[rid] == expected, rid
    assert set(orders) == shop.orders
    for oid in shop.orders:
        o = engine.get_order(oid)
        expected_order = (
            o.reservation_id, o.user, o.sku, o.quantity, o.total_cents, o.status.value, o.payment_method,
            o.failure_reason,
        )  # fmt: skip
        assert orders[oid] == expected_order, oid


def all_events(engine: Engine) -> list[Event]:
    return [e for p in range(engine.config.partitions) for e in engine.read_events(p)]


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every message of a topic, partition by partition in offset order (assign(), not a group join)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        for p in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        deadline = time.monotonic() + timeout_s
        while sum(len(v) for v in by_partition.values()) < sum(ends.values()):
            assert time.monotonic() < deadline, f"could not read all of {topic}"
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is None:
                    body = msgspec.json.decode(message.value())
                    body["_key"] = message.key().decode()
                    by_partition[message.partition()].append(body)
        return [m for p in sorted(by_partition) for m in by_partition[p]]
    finally:
        consumer.close()


def assert_kafka_holds_every_event(settings: Settings, events: list[Event], *, exactly_once: bool) -> None:
    """Each topic holds each event routed to it, keyed by SKU, in stream order per SKU, with stable ids.

    ``exactly_once``: no repeats at all (no failure happened); otherwise repeats are allowed (at least
    once) but the first copies must be in stream order."""
    topics = Topics(settings.topic_reservations, settings.topic_orders, settings.topic_inventory)
    position = {e.id: (e.partition, i) for i, e in enumerate(events)}
    for topic in (topics.reservations, topics.orders, topics.inventory):
        expected = [e for e in events if any(t == topic for t, _ in messages(e, topics))]
        received = read_topic(str(settings.kafka_bootstrap), topic)
        ids = [m["event_id"] for m in received]
        if exactly_once:
            assert len(ids) == len(set(ids)), f"{topic}: repeated event ids"
        assert set(ids) == {e.id for e in expected}, f"{topic}: events missing or unknown"
        assert all(m["schema_version"] == 1 and m["_key"] == m["sku_id"] for m in received)
        per_sku: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for m in received:
            if m["event_id"] not in seen:
                seen.add(m["event_id"])
                per_sku[m["sku_id"]].append(m["event_id"])
        for sku, sku_ids in per_sku.items():
            assert sku_ids == sorted(sku_ids, key=position.__getitem__), f"{topic}: {sku} out of order"


def postgres_snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = {
        # inventory_id is a random uuid: compare everything else.
        "inventory": "SELECT sku_id, total_count, available_count, reserved_count, sold_count, version, "
        "updated_at FROM inventory ORDER BY sku_id",
        "products": "SELECT * FROM products ORDER BY sku_id",
        "reservations": "SELECT * FROM reservations ORDER BY reservation_id",
        "orders": "SELECT * FROM orders ORDER BY order_id",
        "stream_offsets": "SELECT partition, applied_id, applied_events FROM stream_offsets ORDER BY 1",
    }
    with psycopg.connect(database_url) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in tables.items()}
