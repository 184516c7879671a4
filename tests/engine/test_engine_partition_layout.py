"""The partition count is a property of the keyspace, not of a process: the first engine records it in
``fs:{layout}``, and one configured with another count refuses to start instead of finding no SKU. And on
the launcher's cluster each master serves an equal share of the partitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashsale.engine import AsyncEngine, Engine, EngineConfig, SaleSettings
from flashsale.engine.cluster import slot_of
from flashsale.engine.keys import PartitionCountMismatch

from flashsale.launcher import RedisCluster, partition_slots, slot_ranges

pytestmark = pytest.mark.cluster


async def test_an_engine_with_another_partition_count_is_refused(
    engine: Engine, redis_url: str, on_cluster: bool
) -> None:
    engine.load_sale(SaleSettings(sku="LAYOUT-1", total=3))
    assert engine.redis.hget(engine.keys.layout(), "partitions") == "16"
    other = Engine.from_url(redis_url, EngineConfig(partitions=32), cluster=on_cluster, max_connections=2)
    with pytest.raises(PartitionCountMismatch, match="laid out in 16 partitions"):
        other.load_scripts()
    other.close()
    later = AsyncEngine.from_url(redis_url, EngineConfig(partitions=8), cluster=on_cluster)
    with pytest.raises(PartitionCountMismatch, match="FLASHSALE_PARTITIONS=16"):
        await later.load_scripts()
    await later.close()
    same = AsyncEngine.from_url(redis_url, EngineConfig(), cluster=on_cluster)
    await same.load_scripts()  # the same count: welcome
    assert (await same.get_sale("LAYOUT-1")).total == 3
    await same.close()


def test_the_first_engine_on_an_empty_keyspace_records_its_count(redis_url: str, on_cluster: bool) -> None:
    first = Engine.from_url(redis_url, EngineConfig(partitions=32), cluster=on_cluster, max_connections=2)
    first.load_scripts()
    assert first.redis.hget(first.keys.layout(), "partitions") == "32"
    first.close()


@pytest.mark.parametrize("masters", [1, 2, 3, 4, 5])
def test_slots_are_cut_between_partitions_so_masters_share_them_evenly(masters: int) -> None:
    slots = partition_slots(16)
    ranges = slot_ranges(masters, slots)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == 16383
    assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(masters - 1))  # contiguous, no gap
    shares = [sum(low <= s <= high for s in slots) for low, high in ranges]
    assert sum(shares) == 16
    assert max(shares) - min(shares) <= 1, shares


def test_the_launchers_cluster_serves_the_partitions_evenly(redis_cluster: RedisCluster) -> None:
    engine_keys = EngineConfig()
    owners = [redis_cluster.slot_owner(slot_of(f"fs:{{p{i}}}:")).port for i in range(engine_keys.partitions)]
    shares = sorted(owners.count(node.port) for node in redis_cluster.masters)
    assert shares == [5, 5, 6]


def test_a_cluster_with_a_replica_per_master_and_a_data_dir_comes_back_after_a_restart(
    tmp_path: Path,
) -> None:
    with RedisCluster(2, replicas=1, data_dir=tmp_path) as cluster:
        ports = [node.port for node in cluster.nodes]
        engine = Engine.from_url(cluster.url, cluster=True, max_connections=4)
        engine.load_scripts()
        engine.load_sale(SaleSettings(sku="DURABLE", total=7))
        engine.reserve("DURABLE", "alice")
        roles = [node.info("replication")["role"] for node in cluster.nodes]
        assert roles == ["master", "master", "slave", "slave"]
        engine.redis.execute_command("WAIT", 1, 2000, target_nodes=engine.redis.get_primaries())
        engine.close()
        replica = cluster.kill(2)  # kill -9: no shutdown, its files kept
        assert replica.process is None
        replica.start()  # the same node again: nodes.conf makes it the replica it was
        cluster.wait_until_ready()
        assert replica.info("replication")["role"] == "slave"
    with RedisCluster(2, replicas=1, data_dir=tmp_path) as cluster:
        assert [node.port for node in cluster.nodes] == ports
        engine = Engine.from_url(cluster.url, cluster=True, max_connections=4)
        engine.load_scripts()
        sale = engine.get_sale("DURABLE")
        assert (sale.total, sale.reserved) == (7, 1)
        engine.close()
