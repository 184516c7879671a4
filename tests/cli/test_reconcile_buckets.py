"""`flashsale reconcile` with a SKU split into stock buckets (engine/buckets.py): the buckets are summed into
one SKU on both sides, units moving between two buckets are counted, drift in one bucket is found, and each
repair brings a bucketed sale back (the Redis rebuild lays it out in its buckets again)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flashsale.engine import Engine, FlashSaleError, SaleSettings
from flashsale.engine.keys import home_bucket, new_transfer_id

from flashsale.cli import main

Drain = Callable[[Engine, str], int]

SKU, BUCKETS = "BUCKETED-1", 4


def _report(env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["reconcile", "--json"], env=env, catch_exceptions=False)
    document: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if document["ok"] else 1)
    return document


def _repair(env: dict[str, str], direction: str) -> None:
    result = CliRunner().invoke(
        main, ["reconcile", "--repair", direction, "--yes"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def bucketed(engine: Engine, database_url: str, drain: Drain) -> Engine:
    """A 4-bucket sale after holds, purchases and releases (most shoppers homed on bucket 0, so units moved),
    drained; then a hold, a purchase and a transfer cut after its withdrawal, not applied."""
    engine.load_sale(SaleSettings(sku=SKU, total=40, per_user_limit=2), buckets=BUCKETS)
    users = [u for u in (f"b-{n}" for n in range(400)) if home_bucket(u, BUCKETS) == 0][:24]
    for n, user in enumerate(users):
        hold = engine.reserve(SKU, user)
        if n % 3 == 0:
            engine.confirm(engine.begin_checkout(hold.id, user, "card").id, user)
        elif n % 3 == 1:
            engine.release(hold.id, user)
    assert drain(engine, database_url) > 40
    late = engine.reserve(SKU, "late-buyer")
    engine.confirm(engine.begin_checkout(late.id, "late-buyer", "card").id, "late-buyer")
    giver = engine.keys.for_bucket(SKU, 2)
    units, _at = engine._run(engine.ops.transfer_out(SKU, 2, new_transfer_id(giver), 1, 2))
    assert units == 2  # withdrawn, not deposited: moving
    return engine


@pytest.mark.cluster
def test_a_bucketed_sale_reconciles_with_zero_drift_its_buckets_summed(
    bucketed: Engine, env: dict[str, str]
) -> None:
    sale = bucketed.get_sale(SKU)
    assert sale.moving == 2
    document = _report(env)
    assert document["drift"] == []
    (view,) = [s for s in document["skus"] if s["sku"] == SKU]
    assert view["redis"] == {
        "total": 40,
        "available": sale.available,
        "reserved": sale.reserved,
        "sold": sale.sold,
    }


@pytest.mark.cluster
def test_drift_in_one_bucket_is_found_and_redis_is_rebuilt_in_its_buckets(
    bucketed: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    before = bucketed.get_sale(SKU)
    bucket3 = bucketed.keys.for_bucket(SKU, 3).sku(SKU)
    bucketed.redis.hincrby(bucket3, "available", 3)  # units out of nowhere in one bucket
    checks = {(d["check"], d["where"]) for d in _report(env)["drift"] if d["sku"] == SKU}
    assert ("counts_add_up", "redis") in checks
    _repair(env, "redis-from-postgres")
    after = bucketed.get_sale(SKU)
    assert (after.total, after.available, after.reserved, after.sold, after.moving) == (
        40,
        before.available,
        before.reserved,
        before.sold,
        before.moving,
    )
    # The moving units have one ledger entry now, which the sweeper deposits: nothing lost, nothing doubled.
    assert bucketed.finish_transfers(bucketed.keys.for_bucket(SKU, 0).index) == 1
    after = bucketed.get_sale(SKU)
    assert (after.available, after.moving) == (before.available + before.moving, 0)
    assert [b.buckets for b in bucketed.bucket_sales(SKU)] == [BUCKETS] * BUCKETS
    assert _report(env)["ok"] is True
    # Every hold still on its home bucket, and the sale keeps selling there.
    for user in ("late-buyer", "new-after-rebuild"):
        if user == "new-after-rebuild":
            bucketed.reserve(SKU, user)
        counts = bucketed.user_counts(SKU, user)
        assert counts.held + counts.purchased == 1
    drain(bucketed, database_url)
    assert _report(env)["ok"] is True


@pytest.mark.cluster
def test_drift_in_postgres_of_a_bucketed_sale_is_redriven_from_the_stream(
    bucketed: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE inventory SET sold_count = sold_count + 1, available_count = available_count - 1 "
            "WHERE sku_id = %s",
            (SKU,),
        )
    assert not _report(env)["ok"]
    _repair(env, "postgres-from-stream")
    assert _report(env)["ok"] is True
    drain(bucketed, database_url)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT total_count, available_count, reserved_count, sold_count, moving_count FROM inventory "
            "WHERE sku_id = %s",
            (SKU,),
        ).fetchone()
    sale = bucketed.get_sale(SKU)
    assert row == (sale.total, sale.available, sale.reserved, sale.sold, sale.moving)


def test_redis_lost_entirely_is_rebuilt_in_the_sales_buckets_from_postgres(
    bucketed: Engine, env: dict[str, str], database_url: str, drain: Drain
) -> None:
    drain(bucketed, database_url)  # PostgreSQL has everything, the cut transfer included (moving 2)
    before = bucketed.get_sale(SKU)
    bucketed.redis.flushall()
    _repair(env, "redis-from-postgres")
    bucketed.load_scripts()
    after = bucketed.get_sale(SKU)
    assert (after.total, after.available, after.reserved, after.sold, after.moving, after.buckets) == (
        before.total,
        before.available,
        before.reserved,
        before.sold,
        before.moving,
        BUCKETS,
    )
    assert _report(env)["ok"] is True
    assert bucketed.finish_transfers(bucketed.keys.for_bucket(SKU, 0).index) == 1
    assert bucketed.get_sale(SKU).moving == 0
    # Each user's counts are back in their home bucket: the per-user limit (2) still binds.
    bucketed.reserve(SKU, "late-buyer")
    with pytest.raises(FlashSaleError):
        bucketed.reserve(SKU, "late-buyer")
    drain(bucketed, database_url)
    assert _report(env)["ok"] is True
