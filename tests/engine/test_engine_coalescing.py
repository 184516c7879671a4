"""Coalesced reserves (engine/coalescing.py, lua/reserve_many.lua): the plain reserves an asyncio client has
for one SKU at the same moment go to Redis as one script call, and each caller gets what reserve.lua alone
would have given it. Real concurrency on a real Redis (and a Redis Cluster), outcomes read from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis
from engine_checks import all_events, check_invariants, event_types, parse_record, sku_in_partition
from flashsale.engine import AsyncEngine, Engine, EngineConfig, FlashSaleError, Reservation, SaleSettings
from flashsale.engine.keys import new_reservation_id
from flashsale.engine.models import WaitingRoom
from flashsale.engine.operations import RateLimit

from flashsale.launcher import RedisServer


async def _at_once(engine: AsyncEngine, sku: str, users: list[str], quantity: int = 1) -> list[Any]:
    async def one(user: str) -> Reservation | str:
        try:
            return await engine.reserve(sku, user, quantity)
        except FlashSaleError as error:
            return error.code

    return list(await asyncio.gather(*(one(user) for user in users)))


def _outcomes(results: list[Any]) -> Counter[str]:
    return Counter("granted" if isinstance(r, Reservation) else r for r in results)


async def _coalesced(engine: AsyncEngine) -> tuple[int, int, int]:
    coalescer = engine.coalescer
    assert coalescer is not None
    return coalescer.calls, coalescer.items, coalescer.passed_on


@pytest.mark.cluster
async def test_a_crowd_of_plain_reserves_goes_in_few_calls_and_gets_exactly_the_stock(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    await async_engine.load_sale(SaleSettings(sku="HOT", total=100, reservation_ttl_ms=600_000))
    await async_engine.buckets_of("HOT")  # learnt: every reserve below queues at once
    results = await _at_once(async_engine, "HOT", [f"buyer-{n}" for n in range(600)])
    calls, items, passed_on = await _coalesced(async_engine)

    assert _outcomes(results) == {"granted": 100, "OUT_OF_STOCK": 500}
    assert calls <= 600 // 64 + 2, calls
    assert items >= 590, items
    assert passed_on == 0
    won = [r for r in results if isinstance(r, Reservation)]
    assert len({r.id for r in won}) == 100
    assert {r.user for r in won} == {f"buyer-{n}" for n in range(100)}
    # Each grant is a hold as reserve.lua writes it: readable, indexed, one event each, counters exact.
    for reservation in won:
        assert engine.get_reservation(reservation.id) == reservation
        assert engine.user_counts("HOT", reservation.user).held == 1
    sale = engine.get_sale("HOT")
    assert (sale.available, sale.reserved) == (0, 100)
    assert event_types(engine) == {"sale_loaded": 1, "reserved": 100}
    assert [e.reservation_id for e in all_events(engine) if e.type == "reserved"] == [r.id for r in won]
    check_invariants(engine)


async def test_coalesced_grants_write_what_single_reserves_write(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    """The same shoppers on two SKUs of one partition, coalesced on one and one reserve.lua call each on the
    other: the same records, index entries, counts and events, but for ids and clocks."""
    skus = (sku_in_partition(5, stem="PAIR-A"), sku_in_partition(5, stem="PAIR-B"))
    for sku in skus:
        await async_engine.load_sale(
            SaleSettings(sku=sku, total=10, per_user_limit=3, reservation_ttl_ms=600_000)
        )
        await async_engine.buckets_of(sku)
    users = ["ann", "bob", "ann", "cy", "bob", "ann"]
    coalesced = await _at_once(async_engine, skus[0], users)
    assert (await _coalesced(async_engine))[0] == 1
    single = [engine.reserve(skus[1], user) for user in users]
    assert all(isinstance(r, Reservation) for r in coalesced)

    raw = engine.redis
    p = engine.keys.for_sku(skus[0])

    def picture(sku: str, reservations: list[Any]) -> dict[str, Any]:
        fields = raw.hgetall(p.sku(sku))
        records = [parse_record(raw.hget(p.open_holds(), r.id), open_hold=True) for r in reservations]
        entries = [entry.split(" ")[1] for entry in raw.lrange(p.due(sku), 0, -1)]
        events = [e for e in all_events(engine) if e.type == "reserved" and e.sku == sku]
        return {
            "counters": {
                k: v for k, v in fields.items() if k in ("available", "reserved") or k.startswith("h:")
            },
            "due_last": int(fields["due_last"]) - reservations[-1].created_at,
            "records": [
                (r["user"], r["quantity"], int(r["expires_at"]) - int(r["created_at"])) for r in records
            ],
            "listed": entries == [r.id for r in reservations],
            "events": [
                (e.reservation_id == r.id, e.user, e.quantity, e.expires_at - e.at)
                for e, r in zip(events, reservations, strict=False)
            ],
        }

    a, b = picture(skus[0], coalesced), picture(skus[1], single)
    assert a == b
    assert a["counters"] == {"available": "4", "reserved": "6", "h:ann": "3", "h:bob": "2", "h:cy": "1"}
    assert a["listed"]
    assert len(a["events"]) == 6
    check_invariants(engine)


async def test_a_shopper_twice_in_one_call_is_held_to_the_per_user_limit(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    await async_engine.load_sale(SaleSettings(sku="LIMIT", total=50, per_user_limit=1))
    await async_engine.buckets_of("LIMIT")
    results = await _at_once(async_engine, "LIMIT", ["dup"] * 5 + [f"other-{n}" for n in range(10)])
    calls, _, passed_on = await _coalesced(async_engine)

    # The first of the five is granted in the coalesced call; the other four are left to reserve.lua,
    # which refuses them as it refuses a shopper over the limit.
    assert calls == 1
    assert passed_on == 4
    assert _outcomes(results[:5]) == {"granted": 1, "ALREADY_RESERVED": 4}
    assert _outcomes(results[5:]) == {"granted": 10}
    assert engine.user_counts("LIMIT", "dup").held == 1
    assert engine.get_sale("LIMIT").available == 39
    check_invariants(engine)


async def test_what_the_fast_path_cannot_judge_gets_reserve_luas_answer(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    """Each refusal other than sold out is reserve.lua's own, and the coalesced call wrote nothing for it."""
    now = int(time.time() * 1000)
    await async_engine.load_sale(SaleSettings(sku="LATER", total=5, starts_at=now + 3_600_000))
    await async_engine.load_sale(SaleSettings(sku="PAUSED", total=5, paused=True))
    await async_engine.load_sale(SaleSettings(sku="ROOM", total=5))
    await async_engine.set_waiting_room("ROOM", WaitingRoom(on=True))
    await async_engine.load_sale(SaleSettings(sku="NONE-HELD", total=0))
    for sku in ("LATER", "PAUSED", "ROOM", "NONE-HELD"):
        await async_engine.buckets_of(sku)
    before = {
        sku: engine.redis.hgetall(engine.keys.for_sku(sku).sku(sku)) for sku in ("LATER", "PAUSED", "ROOM")
    }
    events_before = event_types(engine)

    later, paused, room, none_held, missing, zero, too_many = await asyncio.gather(
        _at_once(async_engine, "LATER", ["a", "b", "c"]),
        _at_once(async_engine, "PAUSED", ["a", "b", "c"]),
        _at_once(async_engine, "ROOM", ["a", "b", "c"]),
        _at_once(async_engine, "NONE-HELD", ["a", "b", "c"]),
        _at_once(async_engine, "NO-SUCH-SALE", ["a", "b", "c"]),
        _at_once(async_engine, "PAUSED", ["d", "e"], quantity=0),
        _at_once(async_engine, "PAUSED", ["f", "g"], quantity=2),  # above the per-user limit
    )
    assert later == paused == ["SALE_NOT_ACTIVE"] * 3
    assert room == ["NOT_ADMITTED"] * 3
    assert none_held == ["OUT_OF_STOCK"] * 3  # answered in the coalesced call: "none is held"
    assert missing == ["NOT_FOUND"] * 3
    assert zero == too_many == ["INVALID_QUANTITY"] * 2
    assert before == {sku: engine.redis.hgetall(engine.keys.for_sku(sku).sku(sku)) for sku in before}
    assert event_types(engine) == events_before
    _, items, passed_on = await _coalesced(async_engine)
    # Every item went on to reserve.lua but NONE-HELD's three (a SKU with no sale is not learnt, so its
    # calls may reach the coalescer one by one and go straight to reserve.lua).
    assert items >= 16, items
    assert passed_on == items - 3


async def test_sold_out_with_a_hold_lapsed_ends_it_and_grants_again(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    """A lapsed hold is ended by reserve.lua's lazy expiry (the coalesced call passes its items on), and the
    units it gave back are granted exactly once."""
    await async_engine.load_sale(SaleSettings(sku="LAPSE", total=3, reservation_ttl_ms=1_000))
    await async_engine.buckets_of("LAPSE")
    first = await _at_once(async_engine, "LAPSE", [f"early-{n}" for n in range(5)])
    assert _outcomes(first) == {"granted": 3, "OUT_OF_STOCK": 2}
    await asyncio.sleep(1.2)
    again = await _at_once(async_engine, "LAPSE", [f"late-{n}" for n in range(8)])
    assert _outcomes(again) == {"granted": 3, "OUT_OF_STOCK": 5}
    assert event_types(engine)["expired"] == 3
    sale = engine.get_sale("LAPSE")
    assert (sale.available, sale.reserved) == (0, 3)
    check_invariants(engine)


def test_a_call_that_sells_out_past_a_lapsed_hold_keeps_due_first_before_it(engine: Engine) -> None:
    """due_first bounds every open hold's deadline (a sold-out refusal trusts it): a call that takes the last
    unit and then meets a lapsed hold must not set it to its own, later deadline."""
    engine.load_sale(SaleSettings(sku="BOUND", total=3, reservation_ttl_ms=1_000))
    lapsed = [engine.reserve("BOUND", user) for user in ("a", "b")]
    time.sleep(1.1)
    p = engine.keys.for_sku("BOUND")
    items = [(user, 1, new_reservation_id(p)) for user in ("c", "d")]
    answers = engine._run(engine.ops.reserve_many("BOUND", items))
    assert isinstance(answers[0], str)
    assert answers[1] == 0  # sold out but for the lapsed holds: left to reserve.lua's lazy expiry
    due_first = engine.redis.hget(p.sku("BOUND"), "due_first")
    assert due_first is None or int(due_first) <= min(r.expires_at for r in lapsed), due_first
    # reserve.lua then ends the lapsed holds and grants.
    assert engine.reserve("BOUND", "d").user == "d"


@pytest.mark.cluster
async def test_reserves_held_to_the_shared_rate_are_coalesced_and_held_to_it(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    """A user's second press reaches the engine with the shared rate (api/context.py): such reserves go in
    calls of their own, and each user is held to the rate as reserve.lua holds them."""
    await async_engine.load_sale(SaleSettings(sku="RATED", total=20, per_user_limit=3))
    await async_engine.buckets_of("RATED")
    rate = RateLimit(per_s=1, burst=1)  # one request a second, no burst: a second press at once is refused

    async def press(user: str, rate: RateLimit | None) -> str:
        try:
            await async_engine.reserve("RATED", user, rate=rate)
        except FlashSaleError as error:
            return error.code
        return "granted"

    held_to_it = [press(user, rate) for user in ("ann", "ann", "ann", "bob", "cy")]
    outcomes = await asyncio.gather(*held_to_it, press("dee", None), press("eve", None))
    assert outcomes == ["granted", "RATE_LIMITED", "RATE_LIMITED", "granted", "granted", "granted", "granted"]
    calls, items, passed_on = await _coalesced(async_engine)
    assert (calls, items, passed_on) == (2, 7, 0)  # one call held to the rate, one not
    p = engine.keys.for_sku("RATED")
    buckets = [bool(engine.redis.exists(p.rate(u))) for u in ("ann", "bob", "cy", "dee")]
    assert buckets == [True, True, True, False]
    assert engine.user_counts("RATED", "ann").held == 1
    assert engine.get_sale("RATED").reserved == 5
    assert event_types(engine)["reserved"] == 5


@pytest.mark.parametrize("engine_config", [EngineConfig(backlog_budget_mb=1)])
async def test_grants_stop_at_the_backlog_budget(async_engine: AsyncEngine, engine: Engine) -> None:
    limit = EngineConfig(backlog_budget_mb=1).backlog_limit_events
    await async_engine.load_sale(SaleSettings(sku="BACKLOG", total=2 * limit))
    await async_engine.buckets_of("BACKLOG")
    results = await _at_once(async_engine, "BACKLOG", [f"u-{n}" for n in range(limit + 40)])
    # The stream held the sale's event: limit - 1 grants, then reserve.lua's BACKLOG_FULL.
    assert _outcomes(results) == {"granted": limit - 1, "BACKLOG_FULL": 41}
    assert engine.redis.xlen(engine.keys.for_sku("BACKLOG").events()) == limit


@pytest.mark.parametrize("engine_config", [EngineConfig(coalesce_reserves=1)])
async def test_coalescing_can_be_turned_off(async_engine: AsyncEngine) -> None:
    assert async_engine.coalescer is None
    await async_engine.load_sale(SaleSettings(sku="OFF", total=2))
    assert _outcomes(await _at_once(async_engine, "OFF", ["a", "b", "c"])) == {
        "granted": 2,
        "OUT_OF_STOCK": 1,
    }


def test_the_setting_is_bounded() -> None:
    with pytest.raises(ValueError, match="coalesce_reserves"):
        EngineConfig(coalesce_reserves=0)


async def test_redis_killed_mid_call_fails_every_item_of_it() -> None:
    """kill -9 of Redis while a coalesced call waits for its reply: each of its callers gets the connection
    error (it cannot know whether it was granted), none waits forever."""
    with RedisServer() as server:
        engine = AsyncEngine.from_url(server.url)
        try:
            await engine.load_scripts()
            await engine.load_sale(SaleSettings(sku="CUT", total=10))
            await engine.buckets_of("CUT")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            pending = asyncio.gather(*(engine.reserve("CUT", u) for u in "abc"), return_exceptions=True)
            await asyncio.sleep(0.3)
            os.kill(server.process.pid, signal.SIGKILL)
            outcomes = await asyncio.wait_for(pending, 10)
            coalescer = engine.coalescer
            assert coalescer is not None
            assert coalescer.calls == 1
        finally:
            with contextlib.suppress(Exception):
                await engine.close()
    assert all(isinstance(o, redis.exceptions.ConnectionError) for o in outcomes), outcomes


async def test_coalesced_refusals_leave_no_garbage_cycles(async_engine: AsyncEngine) -> None:
    """A sold-out sale answers nearly every call with a refusal: a reference cycle per refusal (a frame in
    its traceback holding the queue) cost the client a third more CPU in garbage collection."""
    await async_engine.load_sale(SaleSettings(sku="CYCLES", total=1))
    await async_engine.buckets_of("CYCLES")
    await async_engine.reserve("CYCLES", "first")
    await _at_once(async_engine, "CYCLES", [f"warm-{n}" for n in range(50)])
    gc.collect()
    gc.disable()
    try:
        results = await _at_once(async_engine, "CYCLES", [f"late-{n}" for n in range(500)])
        found = gc.collect()
    finally:
        gc.enable()
    assert results == ["OUT_OF_STOCK"] * 500
    assert found < 50, f"{found} objects in cycles after 500 refusals"
