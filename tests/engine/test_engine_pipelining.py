"""The asyncio client's auto-pipelining under the failures a production Redis link has: connections killed
mid-pipeline, and a pool far smaller than the load, shared with plain reads.

What must hold: every acknowledged reservation is in Redis; no script ever runs twice (a caller whose
pipeline died gets an error, never a silent re-send); the counters and the stream still agree.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from flashsale.engine import AsyncEngine, Engine, EngineConfig, Reservation, SaleSettings
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.engine.engine_checks import all_events, check_invariants

SKU = "SKU-PIPE"
# Waves of 1,000 shoppers: fewer on the cluster variant.
WAVES, CLUSTER_WAVES = 8, 6

pytestmark = pytest.mark.cluster


def _server_urls(engine: Engine, url: str) -> list[str]:
    """Every server the engine talks to: the one Redis, or each master of the cluster."""
    if isinstance(engine.redis, redis.RedisCluster):
        return [f"redis://{node.host}:{node.port}/0" for node in engine.redis.get_primaries()]
    return [url]


def _kill_client_connections(urls: list[str], stop: threading.Event, kills: list[int]) -> None:
    """Keeps killing every other client's connection (the engine's) until told to stop."""
    admins = [redis.Redis.from_url(url) for url in urls]
    try:
        while not stop.is_set():
            for admin in admins:
                kills.append(int(admin.client_kill_filter(_type="normal", skipme=True)))
            time.sleep(0.02)
    finally:
        for admin in admins:
            admin.close()


async def test_killed_connections_fail_their_calls_but_lose_nothing_and_run_nothing_twice(
    redis_url: str, engine: Engine, on_cluster: bool
) -> None:
    # A generous limit: a script that ran twice for one call would give its user a second hold.
    engine.load_sale(SaleSettings(sku=SKU, total=1_000_000, per_user_limit=1_000))
    client = AsyncEngine.from_url(
        redis_url, EngineConfig(), max_connections=8, pool_timeout=30, cluster=on_cluster
    )
    await client.load_scripts()
    waves = CLUSTER_WAVES if on_cluster else WAVES

    acknowledged: list[Reservation] = []
    failed = 0

    async def shopper(i: int) -> None:
        nonlocal failed
        try:
            acknowledged.append(await client.reserve(SKU, f"user-{i}"))
        except RedisConnectionError:
            failed += 1

    stop, kills = threading.Event(), []
    urls = _server_urls(engine, redis_url)
    killer = threading.Thread(target=_kill_client_connections, args=(urls, stop, kills))
    killer.start()
    try:
        for wave in range(waves):
            await asyncio.gather(*(shopper(wave * 1000 + i) for i in range(1000)))
    finally:
        stop.set()
        killer.join()
        await client.close()

    assert sum(kills) > 0, "the test never managed to kill a connection"
    assert failed > 0, "killed connections must surface as errors to their callers"
    assert len(acknowledged) + failed == waves * 1000

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
    redis_url: str, engine: Engine, on_cluster: bool
) -> None:
    engine.load_sale(SaleSettings(sku=SKU, total=500))
    client = AsyncEngine.from_url(
        redis_url, EngineConfig(), max_connections=1, pool_timeout=20, cluster=on_cluster
    )
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
