"""Prometheus metrics of the API: request latency by route template, reservations and checkouts by
outcome, refusals answered from the sold-out flags (api/soldout.py), and, read from Redis at scrape time,
whether each Redis serving partitions answers a PING (each master of a cluster), stock per SKU,
write-behind lag per partition (the worker's own figures, ``writeback.lag``) and payments: the gateway's
moves, its unsettled payments per partition, and what settlement did (``writeback.settlement``, which
runs in the worker).

With several worker processes (``flashsale serve --workers N``), ``PROMETHEUS_MULTIPROC_DIR`` is set by
the serve command and the counters and histograms of all workers are summed at scrape time.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import redis.asyncio as aioredis
from flashsale.api.schemas import NodeHealth
from flashsale.engine import Sale
from flashsale.engine.keys import Keyspace
from flashsale.engine.models import QueueFigures
from flashsale.writeback.lag import PartitionLag
from flashsale.writeback.payments import GatewayError, GatewayReport, PaymentGateway
from flashsale.writeback.settlement import read_settlements
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

# How late refusals answered from memory may reach their counters (count_soldout_refusal).
SOLDOUT_FLUSH_S = 0.1
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COALESCED_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class PaymentFigures(NamedTuple):
    gateway: GatewayReport
    settlements: dict[str, int]  # action -> payments settlement captured, voided, refunded, finalized


async def read_payments(
    gateway: PaymentGateway, client: aioredis.Redis, keyspace: Keyspace
) -> PaymentFigures | None:
    """The payment figures of a scrape; None when the gateway or Redis did not answer."""
    try:
        return PaymentFigures(await gateway.report(), await read_settlements(client, keyspace))
    except (GatewayError, RedisError, OSError):
        return None


class ApiMetrics:
    """The metrics of one app. Each app has its own registry, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "flashsale_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reservations = Counter(
            "flashsale_reservations",
            "Reservation attempts by outcome (created, or the refusal's error code)",
            ["outcome"],
            registry=self.registry,
        )
        self.soldout_refusals = Counter(
            "flashsale_soldout_shortcircuit",
            "Reservations refused OUT_OF_STOCK from this process's memory, without Redis (also counted "
            "in flashsale_reservations_total)",
            registry=self.registry,
        )
        self._soldout_pending = 0
        self.checkouts = Counter(
            "flashsale_checkouts",
            "Checkout attempts by outcome (confirmed, declined, or the refusal's error code)",
            ["outcome"],
            registry=self.registry,
        )
        self.joins = Counter(
            "flashsale_queue_joins",
            "Waiting-room joins answered by this API (joined: a new place; repeat: the same place again)",
            ["outcome"],
            registry=self.registry,
        )
        self.coalesced = Histogram(
            "flashsale_coalesced_reserves",
            "Plain reserves per reserve_many script call: the reserves of one SKU this process had at the "
            "same moment, sent as one (engine/coalescing.py)",
            buckets=COALESCED_BUCKETS,
            registry=self.registry,
        )
        self.passed_on = Counter(
            "flashsale_coalesced_passed_on",
            "Reserves of a reserve_many call that it left to reserve.lua (a refusal other than sold out, "
            "lapsed holds to end, a sale not open)",
            registry=self.registry,
        )
        # outcome -> its counter child: labels() takes a lock and builds a key on every call.
        self._outcomes: dict[tuple[Counter, str], Counter] = {}

    def count_soldout_refusal(self) -> None:
        """One reservation refused OUT_OF_STOCK from memory (api/soldout.py): added to its two counters
        at most SOLDOUT_FLUSH_S later (and at a scrape of this process), in one go. With several workers
        every counter update is a locked write to a shared file: two per refusal were a fifth of what such
        a refusal costs in Python (README, "Sold out")."""
        if not self._soldout_pending:
            asyncio.get_running_loop().call_later(SOLDOUT_FLUSH_S, self.flush_soldout_refusals)
        self._soldout_pending += 1

    def flush_soldout_refusals(self) -> None:
        pending, self._soldout_pending = self._soldout_pending, 0
        if pending:
            self.soldout_refusals.inc(pending)
            self.reservations.labels("OUT_OF_STOCK").inc(pending)

    def observe_coalesced(self, items: int, passed_on: int) -> None:
        """One reserve_many call (engine/coalescing.py): one observation per call, not per reserve."""
        self.coalesced.observe(items)
        if passed_on:
            self.passed_on.inc(passed_on)

    def count_reservation(self, outcome: str) -> None:
        self._count(self.reservations, outcome)

    def count_join(self, outcome: str) -> None:
        self._count(self.joins, outcome)

    def count_checkout(self, outcome: str) -> None:
        self._count(self.checkouts, outcome)

    def _count(self, counter: Counter, outcome: str) -> None:
        child = self._outcomes.get((counter, outcome))
        if child is None:
            child = self._outcomes[counter, outcome] = counter.labels(outcome)
        child.inc()

    def exposition(
        self,
        sales: Iterable[Sale] | None,
        lags: Iterable[PartitionLag],
        backlog_limit: int = 0,
        payments: PaymentFigures | None = None,
        queues: Iterable[QueueFigures] = (),
        nodes: Mapping[str, NodeHealth] | None = None,
    ) -> bytes:
        """The text format for a scrape: this process's (or all workers') series, then live stock, lag,
        backlog and payments (``sales`` None: Redis did not answer, flashsale_redis_up is 0 and there is no
        stock to show; ``payments`` None: no payment series), and each Redis node's PING (``nodes``, by
        host:port: api.health)."""
        self.flush_soldout_refusals()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            merged = CollectorRegistry()
            merged.register(WorkerFiles(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
            counted = generate_latest(merged)
        else:
            counted = generate_latest(self.registry)
        live = CollectorRegistry()
        live.register(_LiveState(sales, list(lags), backlog_limit, payments, list(queues), dict(nodes or {})))
        return counted + generate_latest(live)


class WorkerFiles(Collector):
    """Every worker's counters and histograms, summed from their files: prometheus_client's
    MultiProcessCollector but for one race. A process creates its file for a metric type empty and sizes it
    a moment later; a scrape by another worker that reads it in between raised ``struct.error`` for every
    series (prometheus/client_python#1199, open in 0.26): a 500 from /metrics, seen under load in
    tests/api/test_serve.py. A file shorter than its header has recorded nothing yet, so it is skipped."""

    HEADER_BYTES = 8

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if self._sized(f)]
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged

    def _sized(self, path: str) -> bool:
        try:
            return os.path.getsize(path) >= self.HEADER_BYTES
        except FileNotFoundError:  # a live gauge's file removed since the glob
            return False


class _LiveState(Collector):
    """Gauges read from Redis just before the scrape: there is nothing to keep in step between scrapes."""

    def __init__(
        self,
        sales: Iterable[Sale] | None,
        lags: list[PartitionLag],
        backlog_limit: int,
        payments: PaymentFigures | None,
        queues: list[QueueFigures],
        nodes: dict[str, NodeHealth],
    ) -> None:
        self.redis_up = sales is not None
        self.nodes = nodes
        self.queues = queues
        self.sales = list(sales or ())
        self.lags = lags
        self.backlog_limit = backlog_limit
        self.payments = payments

    def collect(self) -> Iterator[Metric]:
        up = int(self.redis_up)
        yield GaugeMetricFamily("flashsale_redis_up", "1 when Redis answered the scrape", value=up)
        node_up = GaugeMetricFamily(
            "flashsale_redis_node_up",
            "1 when this Redis (the one server, or a master of a Redis Cluster) answered PING at the scrape",
            labels=["node"],
        )
        node_partitions = GaugeMetricFamily(
            "flashsale_redis_node_partitions", "Partitions this Redis serves", labels=["node"]
        )
        for name, node in sorted(self.nodes.items()):
            node_up.add_metric([name], int(node.status == "UP"))
            node_partitions.add_metric([name], len(node.partitions))
        yield node_up
        yield node_partitions
        stock = GaugeMetricFamily(
            "flashsale_stock_units",
            "Units of a SKU by state (available, reserved, sold, total; moving: between two of its stock "
            "buckets, 0 without buckets)",
            labels=["sku", "state"],
        )
        paused = GaugeMetricFamily("flashsale_sale_paused", "1 when the SKU's sale is paused", labels=["sku"])
        for sale in self.sales:
            for state in ("available", "reserved", "sold", "total", "moving"):
                stock.add_metric([sale.sku, state], getattr(sale, state))
            paused.add_metric([sale.sku], int(sale.paused))
        pending = GaugeMetricFamily(
            "flashsale_writeback_lag_events",
            "Events of a partition's stream that PostgreSQL or Kafka has not taken yet",
            labels=["partition"],
        )
        age = GaugeMetricFamily(
            "flashsale_writeback_lag_seconds",
            "How long the oldest of those events has waited (0 when none)",
            labels=["partition"],
        )
        stalled = GaugeMetricFamily(
            "flashsale_writeback_partition_stalled",
            "1 when the worker stopped a partition on an event a sink can never take, or on events Redis "
            "lost (flashsale worker lag says which; flashsale worker resume after the fix)",
            labels=["partition"],
        )
        budget = GaugeMetricFamily(
            "flashsale_writeback_backlog_budget_ratio",
            "A partition's unapplied events over the budget at which reserve refuses (BACKLOG_FULL)",
            labels=["partition"],
        )
        for lag in self.lags:
            label = [str(lag.partition)]
            pending.add_metric(label, lag.pending)
            age.add_metric(label, lag.oldest_age_ms / 1000)
            stalled.add_metric(label, int(lag.stalled_event is not None))
            if self.backlog_limit:
                budget.add_metric(label, lag.pending / self.backlog_limit)
        yield stock
        yield paused
        yield pending
        yield age
        yield stalled
        yield budget
        if self.payments is not None:
            yield from _payment_metrics(self.payments)
        yield from _queue_metrics(self.queues, {sale.sku: sale for sale in self.sales})


def queue_stalled_s(figures: QueueFigures, sale: Sale | None) -> float:
    """How long shoppers have waited in line with nobody admitted while the sale could admit (live, not
    paused, units available, the line open); 0 otherwise. With a stock factor, admissions also wait for
    admitted shoppers to reserve, so a stall up to the admission's length can be the rule at work."""
    if sale is None or figures.line == 0 or figures.closed or sale.paused or sale.available == 0:
        return 0.0
    now = figures.now
    if now < sale.starts_at or (sale.ends_at and now >= sale.ends_at):
        return 0.0
    return max(0, now - max(figures.admitted_at, sale.starts_at)) / 1000


def _queue_metrics(queues: list[QueueFigures], sales: dict[str, Sale]) -> Iterator[Metric]:
    line = GaugeMetricFamily("flashsale_queue_length", "Shoppers in a waiting room's line", labels=["sku"])
    live = GaugeMetricFamily(
        "flashsale_queue_admitted_now", "Admissions of a waiting room not lapsed yet", labels=["sku"]
    )
    admitted = CounterMetricFamily(
        "flashsale_queue_admitted", "Shoppers a waiting room admitted (rate(): admitted/s)", labels=["sku"]
    )
    abandoned = CounterMetricFamily(
        "flashsale_queue_abandoned", "Admissions that lapsed without a reservation", labels=["sku"]
    )
    sent_away = CounterMetricFamily(
        "flashsale_queue_sent_away",
        "Shoppers sent away from the line because the SKU sold out",
        labels=["sku"],
    )
    stalled = GaugeMetricFamily(
        "flashsale_queue_stalled_seconds",
        "How long a waiting room's line has waited with nobody admitted while the sale could admit",
        labels=["sku"],
    )
    step_age = GaugeMetricFamily(
        "flashsale_queue_admitter_step_age_seconds",
        "Time since the admitter's last step for a waiting room (an admitter that died stops stepping)",
        labels=["sku"],
    )
    waited = HistogramMetricFamily(
        "flashsale_queue_wait_seconds",
        "Time in line until admission (from joining, or from the start for those who joined before it)",
        labels=["sku"],
    )
    for q in queues:
        label = [q.sku]
        line.add_metric(label, q.line)
        live.add_metric(label, q.admitted_live)
        admitted.add_metric(label, q.admitted)
        abandoned.add_metric(label, q.lapsed)
        sent_away.add_metric(label, q.sent_away)
        stalled.add_metric(label, queue_stalled_s(q, sales.get(q.sku)))
        step_age.add_metric(label, max(0, q.now - q.tick_at) / 1000 if q.tick_at else 0)
        buckets, seen = [], 0
        for bound, count in q.wait_buckets.items():
            seen += count
            buckets.append(("+Inf" if bound == "inf" else bound, seen))
        waited.add_metric(label, buckets, q.wait_ms / 1000)
    yield from (line, live, admitted, abandoned, sent_away, stalled, step_age, waited)


def _payment_metrics(figures: PaymentFigures) -> Iterator[Metric]:
    moves = CounterMetricFamily(
        "flashsale_payments",
        "Payment gateway moves by result (authorized, declined, captured, voided, refunded)",
        labels=["result"],
    )
    for result, count in sorted(figures.gateway.counts.items()):
        moves.add_metric([result], count)
    settled = CounterMetricFamily(
        "flashsale_payment_settlements",
        "Payments the settlement pass settled, by action (capture, void, refund, finalize)",
        labels=["action"],
    )
    for action, count in sorted(figures.settlements.items()):
        settled.add_metric([action], count)
    unsettled = GaugeMetricFamily(
        "flashsale_payments_unsettled",
        "Payments not final yet: authorizations, and captures whose order is being cancelled",
        labels=["partition"],
    )
    oldest = GaugeMetricFamily(
        "flashsale_payments_unsettled_seconds",
        "How long the oldest of those payments has not been final (0 when none)",
        labels=["partition"],
    )
    for partition in figures.gateway.unsettled:
        unsettled.add_metric([str(partition.partition)], partition.count)
        oldest.add_metric([str(partition.partition)], partition.oldest_age_ms / 1000)
    yield moves
    yield settled
    yield unsettled
    yield oldest
