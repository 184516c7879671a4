"""Sale settings and stock changes: what load_sale and restock allow, the sale window, and the engine
recovering when Redis forgets its scripts."""

from __future__ import annotations

import asyncio

import pytest
from engine_checks import all_events, check_invariants, keyspace
from flashsale.engine import (
    AsyncEngine,
    Engine,
    FlashSaleError,
    InvalidQuantity,
    OutOfStock,
    Reservation,
    SaleNotActive,
    SaleSettings,
)
from flashsale.engine.events import effect


def _now_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return seconds * 1000 + micros // 1000


def test_a_new_sale_gets_the_defaults_and_an_update_changes_only_what_it_names(engine: Engine) -> None:
    sale = engine.load_sale(SaleSettings(sku="RULE-1", total=10))
    assert (sale.name, sale.per_user_limit, sale.reservation_ttl_ms, sale.paused) == (
        "RULE-1",
        1,
        120_000,
        False,
    )
    assert (sale.total, sale.available, sale.reserved, sale.sold) == (10, 10, 0, 0)
    updated = engine.load_sale(SaleSettings(sku="RULE-1", name="Sneaker", flash_price_cents=4999))
    assert (updated.name, updated.flash_price_cents, updated.total, updated.per_user_limit) == (
        "Sneaker",
        4999,
        10,
        1,
    )
    assert [(e.type, effect(e).available, effect(e).total) for e in all_events(engine)] == [
        ("sale_loaded", 10, 10),
        ("sale_loaded", 0, 0),
    ]


def test_load_sale_refuses_to_shrink_below_reserved_plus_sold(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="RULE-2", total=10, per_user_limit=3))
    engine.reserve("RULE-2", "alice", 3)
    bought = engine.reserve("RULE-2", "bob", 2)
    engine.confirm(engine.begin_checkout(bought.id, "bob", "card").id, "bob", "tx")
    before = keyspace(engine.redis)
    with pytest.raises(InvalidQuantity):
        engine.load_sale(SaleSettings(sku="RULE-2", total=4))  # 3 reserved + 2 sold
    assert keyspace(engine.redis) == before
    sale = engine.load_sale(SaleSettings(sku="RULE-2", total=5))  # exactly what is committed
    assert (sale.total, sale.available, sale.reserved, sale.sold) == (5, 0, 3, 2)
    with pytest.raises(OutOfStock):
        engine.reserve("RULE-2", "carol")
    grown = engine.load_sale(SaleSettings(sku="RULE-2", total=8))
    assert (grown.total, grown.available) == (8, 3)
    check_invariants(engine)


def test_restock_adds_and_removes_available_units_but_never_below_reserved_plus_sold(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="RULE-3", total=4))
    engine.reserve("RULE-3", "alice")
    assert engine.restock("RULE-3", 6).available == 9
    with pytest.raises(InvalidQuantity):
        engine.restock("RULE-3", -10)
    sale = engine.restock("RULE-3", -9)
    assert (sale.total, sale.available, sale.reserved) == (1, 0, 1)
    with pytest.raises(InvalidQuantity):
        engine.restock("RULE-3", -1)
    restocks = [e for e in all_events(engine) if e.type == "restocked"]
    assert [(e.type, effect(e).available, effect(e).total, e.total) for e in restocks] == [
        ("restocked", 6, 6, 10),
        ("restocked", -9, -9, 1),
    ]
    check_invariants(engine)


@pytest.mark.parametrize(
    "window",
    [
        pytest.param({"starts_at": +60_000}, id="not started yet"),
        pytest.param({"ends_at": -1}, id="ended"),
        pytest.param({"paused": True}, id="paused"),
    ],
)
def test_outside_the_sale_window_reserve_is_refused_and_nothing_changes(engine: Engine, window: dict) -> None:
    now = _now_ms(engine)
    settings = {k: (now + v if k in ("starts_at", "ends_at") else v) for k, v in window.items()}
    if "ends_at" in settings:
        settings["starts_at"] = now - 60_000
    engine.load_sale(SaleSettings(sku="RULE-4", total=5, **settings))
    before = keyspace(engine.redis)
    with pytest.raises(SaleNotActive):
        engine.reserve("RULE-4", "alice")
    assert keyspace(engine.redis) == before


def test_inside_the_window_and_after_unpausing_reserve_succeeds(engine: Engine) -> None:
    now = _now_ms(engine)
    engine.load_sale(
        SaleSettings(sku="RULE-5", total=5, starts_at=now - 1000, ends_at=now + 60_000, paused=True)
    )
    with pytest.raises(SaleNotActive):
        engine.reserve("RULE-5", "alice")
    engine.load_sale(SaleSettings(sku="RULE-5", paused=False))
    assert engine.reserve("RULE-5", "alice").quantity == 1
    assert engine.get_sale("RULE-5").available == 4


@pytest.mark.cluster
def test_sync_engine_recovers_when_redis_forgets_its_scripts(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="RULE-6", total=3))
    engine.redis.script_flush()
    assert engine.reserve("RULE-6", "alice").quantity == 1
    engine.redis.script_flush()
    assert engine.restock("RULE-6", 2).available == 4
    assert all(engine.redis.script_exists(*[s.sha for s in engine.scripts.values()]))


async def _race_after_flush(async_engine: AsyncEngine, engine: Engine, sku: str) -> None:
    await async_engine.load_sale(SaleSettings(sku=sku, total=50))
    await async_engine.redis.script_flush()

    async def buy(n: int) -> Reservation | FlashSaleError:
        try:
            return await async_engine.reserve(sku, f"buyer-{n}")
        except FlashSaleError as error:
            return error

    outcomes = await asyncio.gather(*(buy(n) for n in range(200)))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 50
    assert all(isinstance(o, Reservation | OutOfStock) for o in outcomes), outcomes
    sale = engine.get_sale(sku)
    assert (sale.available, sale.reserved) == (0, 50)
    check_invariants(engine)


@pytest.mark.cluster
async def test_many_concurrent_async_calls_recover_when_redis_forgets_its_scripts(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    await _race_after_flush(async_engine, engine, "RULE-7")


async def test_the_unpipelined_async_engine_recovers_when_redis_forgets_its_scripts(
    redis_url: str, engine: Engine
) -> None:
    plain = AsyncEngine.from_url(redis_url, pipelining=False)
    try:
        await _race_after_flush(plain, engine, "RULE-8")
    finally:
        await plain.close()
