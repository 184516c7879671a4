"""FLASHSALE_REDIS_URL naming several nodes of a Redis Cluster (comma-separated): a process that starts
while one of them is down finds the cluster through another (sync and asyncio clients); one node that is
down, named alone, is not enough; several nodes without FLASHSALE_REDIS_CLUSTER are refused."""

from __future__ import annotations

import pytest
import redis
from flashsale.engine import AsyncEngine, Engine, SaleSettings
from flashsale.engine.client import cluster_startup_nodes
from flashsale.engine.settings import Settings, redact_url

from flashsale.launcher import RedisCluster, free_port


def _down() -> str:
    """A node that is down: a loopback port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("order", ["down-first", "down-last"])
async def test_a_cluster_is_found_through_the_named_node_that_answers(
    redis_cluster: RedisCluster, order: str
) -> None:
    down, up = _down(), redis_cluster.url
    url = f"{down},{up}" if order == "down-first" else f"{up}, {down}"
    for attempt in range(4):  # redis-py tries the named nodes in a random order
        sku = f"STARTUP-{order}-{attempt}"
        engine = Engine.from_url(url, cluster=True, max_connections=4)
        try:
            engine.load_scripts()
            engine.load_sale(SaleSettings(sku=sku, total=10))
            reservation = engine.reserve(sku, "u1", 1)
            assert engine.get_reservation(reservation.id).status == "RESERVED"
            sale = engine.get_sale(sku)
            assert (sale.available, sale.reserved) == (9, 1)
            # Every master is known, not only the one named.
            assert len(engine.redis.get_primaries()) == len(redis_cluster.masters)
        finally:
            engine.close()
        aio = AsyncEngine.from_url(url, cluster=True)
        try:
            await aio.load_scripts()
            assert (await aio.get_sale(sku)).reserved == 1
        finally:
            await aio.close()


def test_a_cluster_named_only_by_a_node_that_is_down_is_not_found() -> None:
    with pytest.raises(redis.exceptions.RedisClusterException, match="cannot be connected"):
        Engine.from_url(_down(), cluster=True, max_connections=4)


def test_several_nodes_need_a_cluster_and_each_must_be_a_node() -> None:
    with pytest.raises(ValueError, match="only a Redis Cluster"):
        Settings.from_env({"FLASHSALE_REDIS_URL": "redis://a:7000,redis://b:7000"})
    settings = Settings.from_env(
        {"FLASHSALE_REDIS_URL": "redis://:pw@a:7000,b:7001", "FLASHSALE_REDIS_CLUSTER": "1"}
    )
    assert settings.redis_cluster
    assert cluster_startup_nodes(str(settings.redis_url), cluster=True) == (
        "redis://:pw@a:7000",
        [("b", 7001)],
    )
    assert cluster_startup_nodes("redis://a:7000", cluster=False) == ("redis://a:7000", [])
    with pytest.raises(ValueError, match="only a Redis Cluster"):
        cluster_startup_nodes("redis://a:7000,redis://b:7000", cluster=False)
    with pytest.raises(ValueError, match="is not a node"):
        cluster_startup_nodes("redis://a:7000,", cluster=True)
    with pytest.raises(ValueError, match="is not a node"):
        cluster_startup_nodes("unix:///run/redis.sock,redis://b:7000", cluster=True)
    assert redact_url("redis://:pw@a:7000,redis://u:pw@b:7001") == "redis://:***@a:7000,redis://u:***@b:7001"
    assert redact_url(None) == "(not set)"
