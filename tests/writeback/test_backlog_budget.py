"""The write-behind backlog's memory budget (issue 12, defect 9): while PostgreSQL or Kafka is away the
events wait in Redis; at the configured budget reserve refuses cleanly (503 BACKLOG_FULL, nothing
written) instead of filling Redis until every write fails, and no unapplied event is ever trimmed. When the
sinks are back the worker drains the backlog and reservations flow again."""

from __future__ import annotations

import msgspec
import pytest
import redis
from flashsale.engine import BacklogFull, Engine, EngineConfig, SaleSettings
from flashsale.engine.settings import EVENT_BYTES, Settings
from flashsale.writeback import WorkerOptions, WorkerThread

BUDGET_MB = 1  # the smallest budget a setting can name: 1 MiB over 16 partitions


def _picture(client: redis.Redis, engine: Engine, sku: str) -> tuple[int, int, tuple[int, ...]]:
    sale = engine.get_sale(sku)
    stream = engine.keys.for_sku(sku).events()
    return int(client.dbsize()), int(client.xlen(stream)), (sale.available, sale.reserved, sale.sold)


def test_at_the_budget_reserve_refuses_without_writing_and_the_drained_backlog_lets_it_go_on(
    redis_url: str, settings: Settings
) -> None:
    config = EngineConfig(backlog_budget_mb=BUDGET_MB)
    limit = config.backlog_limit_events
    assert limit == BUDGET_MB * 1024 * 1024 // EVENT_BYTES // config.partitions
    engine = Engine.from_url(redis_url, config)
    client = redis.Redis.from_url(redis_url)
    try:
        engine.load_sale(SaleSettings(sku="FLOOD", total=10 * limit, per_user_limit=1))
        holds = [engine.reserve("FLOOD", f"u{n}") for n in range(limit - 1)]  # no worker runs: a sink outage
        assert client.xlen(engine.keys.for_sku("FLOOD").events()) == limit

        before = _picture(client, engine, "FLOOD")
        with pytest.raises(BacklogFull):
            engine.reserve("FLOOD", "one-too-many")
        assert _picture(client, engine, "FLOOD") == before  # nothing half-written, no entry trimmed

        # What ends holds still works (it shrinks what the sinks will hold), and adds its event.
        engine.release(holds[0].id, "u0")
        assert client.xlen(engine.keys.for_sku("FLOOD").events()) == limit + 1

        budgeted = msgspec.structs.replace(settings, backlog_budget_mb=BUDGET_MB)
        with WorkerThread(budgeted, WorkerOptions(sweep=False)) as worker:
            assert worker.wait_drained(timeout_s=60)
        assert engine.reserve("FLOOD", "after-the-outage").status == "RESERVED"
    finally:
        client.close()
        engine.close()
