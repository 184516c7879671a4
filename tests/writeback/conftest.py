"""Fixtures of the write-behind tests: settings pointing at the session's real servers, and a shop."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from flashsale.engine import Engine
from flashsale.engine.settings import Settings
from writeback_checks import Shop

from flashsale.launcher import KafkaBroker


@pytest.fixture
def settings(redis_url: str, on_cluster: bool, database_url: str, kafka_broker: KafkaBroker) -> Settings:
    """Settings for one test: the session's servers (one Redis, or the 3-master cluster for a test marked
    ``cluster``), topics of its own (the broker outlives the test)."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        redis_url=redis_url,
        redis_cluster=on_cluster,
        database_url=database_url,
        kafka_bootstrap=kafka_broker.bootstrap,
        topic_reservations=f"reservations-{tag}",
        topic_inventory=f"inventory-{tag}",
        topic_orders=f"orders-{tag}",
        topic_reservations_partitions=4,
        topic_inventory_partitions=4,
        topic_orders_partitions=2,
        worker_lease_ms=1500,
        worker_batch_size=200,
    )


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return Shop(engine, [f"SKU-{i}" for i in range(6)])


@pytest.fixture
def stop_load() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()
