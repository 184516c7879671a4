"""The partition streams are the complete log: after a concurrent burst of every kind of operation, the
events replay to exactly Redis's counters, and each successful state change left exactly one event."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from engine_checks import all_events, check_invariants, event_types, sku_in_partition
from flashsale.engine import AsyncEngine, Engine, FlashSaleError, SaleSettings, replay

pytestmark = pytest.mark.cluster

SKUS = [sku_in_partition(p, stem="BURST") for p in (0, 1, 2)] + [sku_in_partition(2, stem="BURST-X")]
USERS = [f"shopper-{n}" for n in range(40)]


async def _shopper(engine: AsyncEngine, user: str, seed: int, done: Counter[str], kept: list[int]) -> None:
    """One shopper's session: reserve, then at random release, or pay (decline, retry, confirm), then
    maybe cancel or get the order fulfilled. Counts each call that succeeded, by the event it must emit,
    and records the units of each order that stays sold."""
    rng = random.Random(seed)
    for _ in range(3):
        sku = rng.choice(SKUS)
        try:
            hold = await engine.reserve(sku, user, rng.choice([1, 1, 2]))
        except FlashSaleError:
            continue
        done["reserved"] += 1
        try:
            if rng.random() < 0.3:
                await engine.release(hold.id, user)
                done["released"] += 1
                continue
            order = await engine.begin_checkout(hold.id, user, "card")
            done["checkout_started"] += 1
            if rng.random() < 0.3:
                await engine.fail_checkout(order.id, user, "PAYMENT_DECLINED")
                done["checkout_failed"] += 1
                order = await engine.begin_checkout(hold.id, user, "card")
                done["checkout_started"] += 1
            await engine.confirm(order.id, user, f"tx-{user}-{hold.id[-6:]}")
            done["confirmed"] += 1
            if rng.random() < 0.3:
                await engine.cancel_order(order.id, user)
                done["order_cancelled"] += 1
                continue
            if rng.random() < 0.5:
                await engine.fulfil_order(order.id)
                done["order_fulfilled"] += 1
            kept.append(hold.quantity)
        except FlashSaleError as error:
            raise AssertionError(f"{user}'s own hold was refused: {error.code} {error}") from error


async def test_after_a_concurrent_burst_the_streams_replay_to_the_counters_one_event_per_change(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    assert len(set(SKUS)) == 4  # two of them share a partition's stream
    done: Counter[str] = Counter()
    kept: list[int] = []
    for sku in SKUS:
        await async_engine.load_sale(SaleSettings(sku=sku, total=15, per_user_limit=3))
        done["sale_loaded"] += 1
    restocks = [async_engine.restock(sku, 5) for sku in SKUS]
    sessions = [_shopper(async_engine, user, n, done, kept) for n, user in enumerate(USERS)]
    await asyncio.gather(*restocks, *sessions)
    done["restocked"] += len(restocks)

    assert done["reserved"] > len(SKUS) * 20 // 2  # the burst did contend for the stock
    assert event_types(engine) == done
    events = all_events(engine)
    assert len({e.id for e in events}) == len(events)  # event ids are unique
    replayed = replay(events)
    for sale in engine.list_sales():
        c = replayed[sale.sku]
        assert (c.total, c.available, c.reserved, c.sold) == (
            sale.total,
            sale.available,
            sale.reserved,
            sale.sold,
        )
        assert sale.total == 20
    assert sum(s.sold for s in engine.list_sales()) == sum(kept)
    check_invariants(engine)
