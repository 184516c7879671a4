"""Which Redis serves which partitions: the one server, or each master of a Redis Cluster.

Everything that works per partition outside the scripts (the write-behind worker's streams, the sweeper,
lag, reconcile, `sale status`, readiness) asks here which node holds a partition, so that it can report
per node and so that a node that is down holds back only its own partitions. On one Redis there is one
node with every partition. On a cluster a partition's keys share the hash tag ``{p<N>}``, so the slot of
any of its keys names its master; the map is read from the client's own slot table (redis-py's
``RedisCluster`` refreshes it on MOVED).

``node_clients`` gives a plain client of each master for the commands a cluster client cannot route by
key (SCAN over a node's keys, INFO, PING).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from .keys import Keyspace

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster


@dataclass(frozen=True)
class Node:
    """One Redis that serves partitions: ``name`` is its ``host:port``."""

    name: str
    partitions: tuple[int, ...]


def _single_name(kwargs: dict[str, object]) -> str:
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _group(owner_of: dict[int, str]) -> list[Node]:
    by_node: dict[str, list[int]] = {}
    for p, name in sorted(owner_of.items()):
        by_node.setdefault(name, []).append(p)
    return [Node(name, tuple(parts)) for name, parts in sorted(by_node.items())]


def partition_nodes(client: SyncClient, keyspace: Keyspace) -> list[Node]:
    """The nodes that serve the keyspace's partitions, sorted by name, each with its partitions."""
    if isinstance(client, redis.cluster.RedisCluster):
        owner = {
            p.index: client.get_node_from_key(p.events()).name  # type: ignore[no-untyped-call]
            for p in keyspace.all()
        }
        return _group(owner)
    name = _single_name(client.connection_pool.connection_kwargs)
    return [Node(name, tuple(range(keyspace.partitions)))]


async def partition_nodes_async(client: AsyncClient, keyspace: Keyspace) -> list[Node]:
    """``partition_nodes`` for an asyncio client (a cluster client reads its slot map first if it has
    not yet)."""
    if isinstance(client, aiocluster.RedisCluster):
        if not client.get_nodes():
            await client.initialize()
        owner: dict[int, str] = {}
        for p in keyspace.all():
            node = client.get_node_from_key(p.events())
            if node is None:
                raise redis.exceptions.ClusterDownError(f"no master serves partition {p.index}")
            owner[p.index] = node.name
        return _group(owner)
    name = _single_name(client.connection_pool.connection_kwargs)
    return [Node(name, tuple(range(keyspace.partitions)))]


def node_clients(client: SyncClient) -> dict[str, redis.Redis]:
    """A plain client of each master (on one Redis: the client itself), by ``host:port``; a cluster's
    come from its nodes' own pools, so the caller does not close them."""
    if isinstance(client, redis.cluster.RedisCluster):
        return {
            node.name: node.redis_connection
            for node in client.get_primaries()  # type: ignore[no-untyped-call]
            if node.redis_connection is not None
        }
    return {_single_name(client.connection_pool.connection_kwargs): client}


_REDIS_PARAMETERS = frozenset(inspect.signature(aioredis.Redis.__init__).parameters) - {
    "self",
    "host",
    "port",
}


def _redis_kwargs(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The connection settings a cluster node was made with that a plain client also takes."""
    return {k: v for k, v in connection_kwargs.items() if k in _REDIS_PARAMETERS}


def node_clients_async(client: AsyncClient) -> dict[str, aioredis.Redis]:
    """The asyncio twin of ``node_clients`` for a cluster client already initialized: a new client of
    each master with the cluster client's connection settings, which the caller closes (on one Redis:
    the client itself, which the caller must not close)."""
    if isinstance(client, aiocluster.RedisCluster):
        return {
            node.name: aioredis.Redis(
                **_redis_kwargs(node.connection_kwargs), host=node.host, port=int(node.port)
            )
            for node in client.get_primaries()
        }
    return {_single_name(client.connection_pool.connection_kwargs): client}
