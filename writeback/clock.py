"""Redis's clock, read on the node that serves a key: the one clock of a partition's deadlines and ids.

On one Redis any command's TIME is the same clock. On a cluster TIME has no key, so a cluster client sends
it to a node of its choosing (a node that may be down, and whose clock is not the partition's); and a
cluster pipeline refuses it. These ask the node of ``key`` instead.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio.cluster as aiocluster
import redis.cluster
from flashsale.engine.nodes import AsyncClient, SyncClient


def _ms(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def now_ms(client: SyncClient, key: str) -> int:
    """Milliseconds since the epoch by the Redis that serves ``key``."""
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return _ms(client.execute_command("TIME", target_nodes=node))
    return _ms(client.time())


async def now_ms_async(client: AsyncClient, key: str) -> int:
    """``now_ms`` for an asyncio client."""
    if isinstance(client, aiocluster.RedisCluster):
        if not client.get_nodes():
            await client.initialize()
        node = client.get_node_from_key(key)
        return _ms(await client.execute_command("TIME", target_nodes=node))
    return _ms(await client.time())
