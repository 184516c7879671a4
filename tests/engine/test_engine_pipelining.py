"""The asyncio client's auto-pipelining under the failures a production Redis link has: connections killed
mid-pipeline, and a pool far smaller than the load, shared with plain reads.

What must hold: every acknowledged reservation is in Redis; no script ever runs twice (a caller whose
pipeline died gets an error, never a silent re-send); the counters and the stream still agree.
"""

from __future__ import annotations

import asyncio
import threading
import time

import redis
from flashsale.engine import AsyncEngine, Engine, EngineConfig, Reservation, SaleSettings
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.engine.engine_checks import all_events, check_invariants

SKU = "SKU-PIPE"


def _kill_client_connections(url: str, stop: threading.Event, kills: list[int]) -> None:
    """Keeps killing every other client's connection (the engine's) until told to stop."""
    admin = redis.Redis.from_url(url)
    try:
        while not stop.is_set():
            kills.append(int(admin.client_kill_filter(_type="normal", skipme=True)))
            time.sleep(0.02)
    finally:
        admin.close()


async def test_killed_connections_fail_their_calls_but_lose_nothing_and_run_nothing_twice(
    redis_url: str, engine: Engine
) -> None:
    # A generous limit: a script that ran twice for one call would give its user a second hold.
    engine.load_sale(SaleSettings(sku=SKU, total=1_000_000, per_user_limit=1_000))
    client = AsyncEngine.from_url(redis_url, EngineConfig(), max_connections=8, pool_timeout=30)
    await client.load_scripts()

    acknowledged: list[Reservation] = []
    failed = 0

    async def shopper(i: int) -> None:
        nonlocal failed
        try:
            acknowledged.append(await client.reserve(SKU, f"user-{i}"))
        except RedisConnectionError:
            failed += 1

    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_client_connections, args=(redis_url, stop, kills))
    killer.start()
    try:
        for wave in range(20):
            await asyncio.gather(*(shopper(wave * 1000 + i) for i in range(1000)))
    finally:
        stop.set()
        killer.join()
        await client.close()

    assert sum(kills) > 0, "the test never managed to kill a connection"
    assert failed > 0, "killed connections must surface as errors to their callers"
    assert len(acknowledged) + failed == 20_000

    sale = engine.get_sale(SKU)
    reserved_in_redis = sale.reserved
    # Nothing acknowledged is lost ...
    for reservation in acknowledged:
        assert engine.get_reservation(reservation.id).user == reservation.user
    # ... a failed call may or may not have run (its reply was lost), but never more than once:
    assert len(acknowledged) <= reserved_in_redis <= len(acknowledged) + failed
    reserved_events = [e for e in all_events(engine) if e.type == "reserved"]
    assert len(reserved_events) == reserved_in_redis
    users = [e.user for e in reserved_events]
    assert len(users) == len(set(users)), "a script ran twice for one call"
    check_invariants(engine)


async def test_a_one_connection_pool_serves_pipelined_scripts_and_plain_reads_together(
    redis_url: str, engine: Engine
) -> None:
    engine.load_sale(SaleSettings(sku=SKU, total=500))
    client = AsyncEngine.from_url(redis_url, EngineConfig(), max_connections=1, pool_timeout=20)
    await client.load_scripts()
    try:
        results = await asyncio.gather(
            *(client.reserve(SKU, f"user-{i}") for i in range(500)),
            *(client.get_sale(SKU) for _ in range(500)),
        )
    finally:
        await client.close()

    reservations = [r for r in results if isinstance(r, Reservation)]
    assert len(reservations) == 500
    assert len(results) == 1000
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved) == (0, 500)
