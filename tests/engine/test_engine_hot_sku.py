"""A hot SKU: far more buyers than units, all at the same instant. Exactly the stock is sold, never more."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from engine_checks import check_invariants, event_types
from flashsale.engine import AsyncEngine, Engine, FlashSaleError, OutOfStock, Reservation, SaleSettings

BUYERS = 1000
UNITS = 100


def _reserve_at_once(engine: Engine, sku: str, buyers: int, threads: int) -> list[Reservation | Exception]:
    start = threading.Barrier(threads)

    def buy(n: int) -> Reservation | Exception:
        if n < threads:
            start.wait()  # the first wave of threads leaves together
        try:
            return engine.reserve(sku, f"buyer-{n}")
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(buy, range(buyers)))


def _assert_exactly_the_stock_sold(outcomes: list[Reservation | Exception], engine: Engine, sku: str) -> None:
    won = [o for o in outcomes if isinstance(o, Reservation)]
    lost = [o for o in outcomes if not isinstance(o, Reservation)]
    assert len(won) == UNITS
    assert len(lost) == BUYERS - UNITS
    assert all(type(o) is OutOfStock for o in lost), {type(o).__name__ for o in lost}
    assert len({r.id for r in won}) == UNITS
    assert sum(r.quantity for r in won) == UNITS
    sale = engine.get_sale(sku)
    assert (sale.total, sale.available, sale.reserved, sale.sold) == (UNITS, 0, UNITS, 0)
    assert event_types(engine) == {"sale_loaded": 1, "reserved": UNITS}
    check_invariants(engine)  # includes: replaying the stream never takes a counter below zero


@pytest.mark.cluster
def test_a_thousand_threads_racing_for_a_hundred_units_get_exactly_a_hundred(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="HOT-1", total=UNITS))
    outcomes = _reserve_at_once(engine, "HOT-1", BUYERS, threads=BUYERS)
    _assert_exactly_the_stock_sold(outcomes, engine, "HOT-1")


@pytest.mark.cluster
async def test_a_thousand_asyncio_tasks_racing_for_a_hundred_units_get_exactly_a_hundred(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    await async_engine.load_sale(SaleSettings(sku="HOT-2", total=UNITS))

    async def buy(n: int) -> Reservation | Exception:
        try:
            return await async_engine.reserve("HOT-2", f"buyer-{n}")
        except FlashSaleError as error:
            return error

    outcomes = await asyncio.gather(*(buy(n) for n in range(BUYERS)))
    _assert_exactly_the_stock_sold(list(outcomes), engine, "HOT-2")


def test_a_pool_much_smaller_than_the_thread_count_makes_callers_wait_never_fail(redis_url: str) -> None:
    observer = redis.Redis.from_url(redis_url)
    connections_before = observer.info("stats")["total_connections_received"]
    small = Engine.from_url(redis_url, max_connections=4, pool_timeout=30)
    try:
        small.load_sale(SaleSettings(sku="HOT-3", total=UNITS))
        outcomes = _reserve_at_once(small, "HOT-3", BUYERS, threads=200)
        # The server saw at most 4 connections from 200 threads: the others queued for one.
        assert observer.info("stats")["total_connections_received"] - connections_before <= 4
        _assert_exactly_the_stock_sold(outcomes, small, "HOT-3")
        pool = small.redis.connection_pool

        # With every connection taken, a caller blocks until one comes back, then succeeds.
        taken = [pool.get_connection() for _ in range(4)]
        finished = threading.Event()
        outcome: list[object] = []

        def late_buyer() -> None:
            try:
                outcome.append(small.restock("HOT-3", 1))
            except Exception as error:
                outcome.append(error)
            finished.set()

        waiter = threading.Thread(target=late_buyer)
        waiter.start()
        assert not finished.wait(0.3), "the call went through although no connection was free"
        for connection in taken:
            pool.release(connection)
        assert finished.wait(10)
        waiter.join()
        assert len(outcome) == 1
        assert not isinstance(outcome[0], Exception), outcome
        assert small.get_sale("HOT-3").available == 1
    finally:
        small.close()
        observer.close()
