"""WAIT mode (FLASHSALE_REDIS_WAIT_REPLICAS): a state change is acknowledged only once N replicas have it.

With replicas, Redis replicates asynchronously: a master that acknowledges a reservation and dies before
its replica received it loses that reservation when the replica is promoted. In WAIT mode each pipeline
of script calls ends with ``WAIT n timeout`` on the same connection, so no script's reply is released
before n replicas have the change; when fewer confirm it in time the caller gets NotReplicated (503
NOT_REPLICATED over HTTP) instead of the reply. Runs on a cluster of its own with one replica per master,
and on a Redis without replicas, where nothing can be confirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from engine_checks import check_invariants, sku_in_partition
from flashsale.engine import AsyncEngine, Engine, EngineConfig, OutOfStock, SaleSettings
from flashsale.engine.cluster import slot_of
from flashsale.engine.errors import NotReplicated
from flashsale.engine.settings import Settings

from flashsale.launcher import RedisCluster, RedisServer

WAIT_ONE = EngineConfig(wait_replicas=1, wait_timeout_ms=2000)


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisCluster]:
    with RedisCluster(3, replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def lonely_redis() -> Iterator[RedisServer]:
    """A Redis with no replica: WAIT 1 can never be satisfied."""
    with RedisServer() as server:
        yield server


def _on_replica(cluster: RedisCluster, key: str, field: str) -> str | None:
    """HGET of ``key`` on the replica of the master serving it (READONLY, no redirection)."""
    for node in cluster.nodes:
        client = node.client(decode_responses=True)
        try:
            role = client.execute_command("ROLE")
            if role[0] != "slave":
                continue
            client.execute_command("READONLY")
            try:
                return client.hget(key, field)  # type: ignore[no-any-return]
            except Exception:  # MOVED: this replica's master serves another slot
                continue
        finally:
            client.close()
    raise AssertionError(f"no replica serves {key}")


def test_the_settings_name_the_wait_mode() -> None:
    settings = Settings.from_env(
        {"FLASHSALE_REDIS_WAIT_REPLICAS": "2", "FLASHSALE_REDIS_WAIT_TIMEOUT_MS": "250"}
    )
    assert settings.engine_config().wait == (2, 250)
    assert Settings.from_env({}).engine_config().wait is None
    with pytest.raises(ValueError, match="wait"):
        EngineConfig(wait_replicas=1, wait_timeout_ms=0)


async def test_every_reservation_acknowledged_in_wait_mode_is_on_a_replica_already(
    replicated_cluster: RedisCluster,
) -> None:
    cluster = replicated_cluster
    admin = Engine.from_url(cluster.url, WAIT_ONE, cluster=True, max_connections=8)
    admin.load_scripts()
    skus = [sku_in_partition(p, stem="WAIT") for p in range(16)]
    for sku in skus:
        admin.load_sale(SaleSettings(sku=sku, total=50, per_user_limit=1))
    engine = AsyncEngine.from_url(cluster.url, WAIT_ONE, cluster=True, max_connections=16)
    await engine.load_scripts()

    async def shopper(n: int) -> list[object]:
        got: list[object] = []
        for i in range(10):
            try:
                got.append(await engine.reserve(skus[(n + i) % 16], f"w{n}-{i}", idempotency_key=f"k{n}-{i}"))
            except OutOfStock:
                got.append("OUT_OF_STOCK")
        return got

    results = [r for rs in await asyncio.gather(*(shopper(n) for n in range(100))) for r in rs]
    held = [r for r in results if not isinstance(r, str)]
    assert len(held) == 16 * 50, len(held)  # every unit, and every other answer a refusal
    # Read on the replicas: each acknowledged hold is there (WAIT returned before its reply was released).
    for reservation in held:
        p = engine.keys.for_reservation(reservation.id)  # type: ignore[attr-defined]
        assert _on_replica(cluster, p.open_holds(), reservation.id) is not None  # type: ignore[attr-defined]
    # The sync client waits too, for each of the calls of a checkout.
    first = held[0]
    order = admin.begin_checkout(first.id, first.user, "card")  # type: ignore[attr-defined]
    assert admin.confirm(order.id, first.user, "tx").status == "CONFIRMED"  # type: ignore[attr-defined]
    check_invariants(admin)
    await engine.close()
    admin.close()


async def test_a_change_no_replica_confirms_in_time_is_not_acknowledged(lonely_redis: RedisServer) -> None:
    config = EngineConfig(wait_replicas=1, wait_timeout_ms=50)
    engine = AsyncEngine.from_url(lonely_redis.url, config)
    await engine.load_scripts()
    admin = Engine.from_url(lonely_redis.url)
    admin.load_sale(SaleSettings(sku="LONELY", total=1))
    with pytest.raises(NotReplicated, match="0 of the 1 replicas"):
        await engine.reserve("LONELY", "ann", idempotency_key="k")
    # The change is on the master, unacknowledged: a retry with the key finds it, still unconfirmed ...
    assert admin.get_sale("LONELY").reserved == 1
    with pytest.raises(NotReplicated):
        await engine.reserve("LONELY", "ann", idempotency_key="k")
    # ... and a refusal, which wrote nothing to lose, is answered as it is; reads need no replica.
    with pytest.raises(OutOfStock):
        await engine.reserve("LONELY", "bob")
    assert (await engine.get_sale("LONELY")).reserved == 1
    # The same without the auto-pipeline, and through the sync client.
    unpipelined = AsyncEngine.from_url(lonely_redis.url, config, pipelining=False)
    with pytest.raises(NotReplicated):
        await unpipelined.restock("LONELY", 1)
    sync = Engine.from_url(lonely_redis.url, config)
    with pytest.raises(NotReplicated):
        sync.restock("LONELY", 1)
    with pytest.raises(OutOfStock):
        sync.reserve("LONELY", "carl", quantity=3)
    assert admin.get_sale("LONELY").total == 3
    for e in (engine, unpipelined):
        await e.close()
    sync.close()
    admin.close()


def test_the_sync_client_in_wait_mode_follows_a_moved_slot_to_its_node(
    replicated_cluster: RedisCluster,
) -> None:
    """In WAIT mode the sync client sends the call and its WAIT to the slot's node itself (one pipeline, one
    connection), so it follows MOVED itself: a stale slot map costs one redirection, not the call."""
    engine = Engine.from_url(replicated_cluster.url, WAIT_ONE, cluster=True, max_connections=4)
    engine.load_scripts()
    sku = sku_in_partition(2, stem="MOVEDWAIT")
    engine.load_sale(SaleSettings(sku=sku, total=5))
    slot = slot_of(engine.keys.for_sku(sku).tag)
    cache = engine.redis.nodes_manager.slots_cache
    owner = cache[slot][0]
    cache[slot] = [next(node for node in engine.redis.get_primaries() if node.name != owner.name)]
    assert engine.reserve(sku, "mover").user == "mover"
    assert engine.redis.nodes_manager.slots_cache[slot][0].name == owner.name
    assert engine.get_sale(sku).reserved == 1
    engine.close()
