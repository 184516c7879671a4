"""Prometheus metrics of the API: request latency by route template, reservations and checkouts by
outcome, refusals answered from the sold-out flags (api/soldout.py), and, read from Redis at scrape time,
stock per SKU and write-behind lag per partition (the worker's own figures, ``writeback.lag``).

With several worker processes (``flashsale serve --workers N``), ``PROMETHEUS_MULTIPROC_DIR`` is set by
the serve command and the counters and histograms of all workers are summed at scrape time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator

from flashsale.engine import Sale
from flashsale.writeback.lag import PartitionLag
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How late refusals answered from memory may reach their counters (count_soldout_refusal).
SOLDOUT_FLUSH_S = 0.1
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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

    def exposition(self, sales: Iterable[Sale] | None, lags: Iterable[PartitionLag]) -> bytes:
        """The text format for a scrape: this process's (or all workers') series, then live stock and lag
        (``sales`` None: Redis did not answer, flashsale_redis_up is 0 and there is no stock to show)."""
        self.flush_soldout_refusals()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            counted = generate_latest(merged)
        else:
            counted = generate_latest(self.registry)
        live = CollectorRegistry()
        live.register(_LiveState(sales, list(lags)))
        return counted + generate_latest(live)


class _LiveState(Collector):
    """Gauges read from Redis just before the scrape: there is nothing to keep in step between scrapes."""

    def __init__(self, sales: Iterable[Sale] | None, lags: list[PartitionLag]) -> None:
        self.redis_up = sales is not None
        self.sales = list(sales or ())
        self.lags = lags

    def collect(self) -> Iterator[Metric]:
        up = int(self.redis_up)
        yield GaugeMetricFamily("flashsale_redis_up", "1 when Redis answered the scrape", value=up)
        stock = GaugeMetricFamily(
            "flashsale_stock_units",
            "Units of a SKU by state (available, reserved, sold, total)",
            labels=["sku", "state"],
        )
        paused = GaugeMetricFamily("flashsale_sale_paused", "1 when the SKU's sale is paused", labels=["sku"])
        for sale in self.sales:
            for state in ("available", "reserved", "sold", "total"):
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
        for lag in self.lags:
            pending.add_metric([str(lag.partition)], lag.pending)
            age.add_metric([str(lag.partition)], lag.oldest_age_ms / 1000)
        yield stock
        yield paused
        yield pending
        yield age


class RequestTimer:
    """ASGI middleware: observes every HTTP request's latency, labelled by its route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            # Unmatched paths share one label: a scanner must not create a series per URL it tries.
            label = (template or "/") if route is not None else "unmatched"
            self.metrics.request_seconds.labels(scope["method"], label, str(status)).observe(
                time.perf_counter() - started
            )
