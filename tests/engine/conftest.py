"""Fixtures of the engine suite, on top of tests/conftest.py's real redis-server and engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flashsale.engine import Engine, EngineConfig


@pytest.fixture
def graceless_engine(redis_url: str, on_cluster: bool) -> Iterator[Engine]:
    """An engine whose checkouts get no payment grace: a hold being paid for lapses at its own deadline."""
    e = Engine.from_url(redis_url, EngineConfig(payment_grace_ms=0), max_connections=50, cluster=on_cluster)
    e.load_scripts()
    yield e
    e.close()
