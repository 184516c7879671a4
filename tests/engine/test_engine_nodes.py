"""Which node serves which partitions: one node with all of them on one Redis, each master its share on
the cluster (the launcher splits the 16 partitions 5/5/6), the same answer from the sync and asyncio
clients, and per-node clients that reach the right master."""

from __future__ import annotations

import pytest
from flashsale.engine.client import async_redis_client, redis_client
from flashsale.engine.keys import Keyspace
from flashsale.engine.nodes import (
    node_clients,
    node_clients_async,
    partition_nodes,
    partition_nodes_async,
)

pytestmark = pytest.mark.cluster


async def test_every_partition_has_exactly_one_node(redis_url: str, on_cluster: bool) -> None:
    keyspace = Keyspace()
    sync = redis_client(redis_url, cluster=on_cluster)
    aio = async_redis_client(redis_url, cluster=on_cluster)
    try:
        nodes = partition_nodes(sync, keyspace)
        assert nodes == await partition_nodes_async(aio, keyspace)
        served = sorted(p for node in nodes for p in node.partitions)
        assert served == list(range(keyspace.partitions))
        if on_cluster:
            assert sorted(len(node.partitions) for node in nodes) == [5, 5, 6]
        else:
            assert len(nodes) == 1
        plain = node_clients(sync)
        assert sorted(plain) == sorted(node.name for node in nodes)
        for node in nodes:
            # A key of each partition written through the cluster client is on that node and no other.
            key = keyspace.partition(node.partitions[0]).writeback_progress()
            sync.hset(key, "probe", "1")
            assert plain[node.name].keys(key) == [key]
            assert sum(len(c.keys(key)) for c in plain.values()) == 1
        aio_plain = node_clients_async(aio)
        try:
            assert sorted(aio_plain) == sorted(plain)
            for name, client in aio_plain.items():
                assert await client.ping()
                assert await client.dbsize() == plain[name].dbsize()
        finally:
            if on_cluster:
                for client in aio_plain.values():
                    await client.aclose()
    finally:
        sync.close()
        await aio.aclose()
