"""Write-behind lag per partition, read from Redis alone (the API and CLI need no worker process).

For each partition: ``pending`` = events in the stream that PostgreSQL or Kafka has not taken yet,
``oldest_age_ms`` = how long the oldest of them has waited (Redis's clock; 0 when none), the stream ids
each sink has taken, the worker holding the partition's lease, and the Redis node that serves it. The
worker trims each stream below what both sinks took, so the stream holds little besides pending events
and the count is cheap.

Each node is read on its own (on one Redis: the one node), two pipelined round trips for its partitions,
ages by its own clock. A node that does not answer does not fail the reading: its partitions come back
with ``node_down`` set (nothing is known of them), the others as usual.

    from flashsale.writeback.lag import read_lag, total_lag
    lags = read_lag(redis_client(url, cluster=...), keyspace)                   # sync (CLI)
    lags = await read_lag_async(async_redis_client(url, cluster=...), keyspace)  # asyncio (API, metrics)
    total_lag(lags).pending, total_lag(lags).oldest_age_ms, nodes_down(lags)
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis
import redis.asyncio.cluster as aiocluster
from flashsale.engine.events import stream_id_key
from flashsale.engine.keys import Keyspace, Partition
from flashsale.engine.nodes import AsyncClient, Node, SyncClient, partition_nodes, partition_nodes_async
from flashsale.writeback.clock import now_ms, now_ms_async
from flashsale.writeback.stalls import STALL_FIELDS, Stall, stall_from_fields

# (applied, published, cursor = the lesser of the two, lease owner, stream length, stall mark)
_Row = tuple[str, str, str, str | None, int, Stall | None]

# What a node that is down answers (or a cluster with no master for the slot): the node's partitions are
# held back, the others go on.
NODE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError, OSError)

# How many already-taken entries we count past when the stream was not trimmed yet (a batch, normally).
_TAKEN_SCAN_LIMIT = 100_000


class PartitionLag(msgspec.Struct, kw_only=True, frozen=True):
    partition: int
    pending: int
    oldest_age_ms: int
    applied_id: str  # last stream id in PostgreSQL ("0-0": none)
    published_id: str  # last stream id acknowledged by Kafka
    owner: str | None  # worker id holding the lease, None when no worker runs this partition
    # Stopped on an event a sink can never take, or on lost events (writeback.stalls): until resumed.
    stalled_event: str | None = None
    stalled_sink: str | None = None
    stalled_error: str | None = None
    stalled_at_ms: int | None = None
    node: str = ""  # host:port of the Redis serving the partition
    # The node did not answer: pending and the ids are unknown (0 and ""), node_error says why.
    node_down: bool = False
    node_error: str | None = None


def total_lag(lags: list[PartitionLag]) -> PartitionLag:
    """The sum of pending events and the worst age over all partitions (partition = -1); partitions
    whose node is down count nothing (``nodes_down`` names them)."""
    return PartitionLag(
        partition=-1,
        pending=sum(lag.pending for lag in lags),
        oldest_age_ms=max((lag.oldest_age_ms for lag in lags), default=0),
        applied_id="",
        published_id="",
        owner=None,
    )


def nodes_down(lags: list[PartitionLag]) -> list[str]:
    """The nodes that did not answer, sorted."""
    return sorted({lag.node for lag in lags if lag.node_down})


def node_of(client: AsyncClient, key: str) -> str:
    """The name of the node serving ``key`` by the client's slot map (on one Redis: "redis")."""
    if isinstance(client, aiocluster.RedisCluster):
        node = client.get_node_from_key(key)
        return node.name if node is not None else "?"
    return "redis"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_round(pipe: Any, partitions: list[Partition]) -> None:
    for p in partitions:
        pipe.hmget(p.writeback_progress(), "applied", "published", *STALL_FIELDS)
        pipe.get(p.writeback_lease())
        pipe.xlen(p.events())


def _cursors(replies: list[Any], partitions: list[Partition]) -> list[_Row]:
    rows = []
    for i, p in enumerate(partitions):
        progress, owner, length = replies[3 * i : 3 * i + 3]
        applied = _text(progress[0]) or "0-0"
        published = _text(progress[1]) or "0-0"
        cursor = min(applied, published, key=stream_id_key)
        stall = stall_from_fields(p.index, dict(zip(STALL_FIELDS, progress[2:], strict=True)))
        rows.append((applied, published, cursor, _text(owner), int(length), stall))
    return rows


def _second_round(pipe: Any, partitions: list[Partition], rows: list[_Row]) -> None:
    for p, (_applied, _published, cursor, _owner, _length, _stall) in zip(partitions, rows, strict=True):
        pipe.xrange(p.events(), f"({cursor}" if cursor != "0-0" else "-", "+", count=1)
        pipe.xrange(p.events(), "-", cursor, count=_TAKEN_SCAN_LIMIT)


def _lags(
    node: str, now_ms: int, partitions: list[Partition], rows: list[_Row], replies: list[Any]
) -> list[PartitionLag]:
    lags = []
    for i, (p, (applied, published, _cursor, owner, length, stall)) in enumerate(
        zip(partitions, rows, strict=True)
    ):
        oldest, taken = replies[2 * i], replies[2 * i + 1]
        pending = max(length - len(taken), 0)
        age = 0
        if oldest:
            age = max(now_ms - stream_id_key(_text(oldest[0][0]) or "0-0")[0], 0)
        lags.append(
            PartitionLag(
                partition=p.index,
                pending=pending,
                oldest_age_ms=age,
                applied_id=applied,
                published_id=published,
                owner=owner,
                stalled_event=stall.event_id if stall else None,
                stalled_sink=stall.sink if stall else None,
                stalled_error=stall.error if stall else None,
                stalled_at_ms=stall.at_ms if stall else None,
                node=node,
            )
        )
    return lags


def _down(node: Node, error: BaseException) -> list[PartitionLag]:
    return [
        PartitionLag(
            partition=p,
            pending=0,
            oldest_age_ms=0,
            applied_id="",
            published_id="",
            owner=None,
            node=node.name,
            node_down=True,
            node_error=str(error)[:300] or type(error).__name__,
        )
        for p in node.partitions
    ]


def _read_node(client: SyncClient, keyspace: Keyspace, node: Node) -> list[PartitionLag]:
    partitions = [keyspace.partition(p) for p in node.partitions]
    now = now_ms(client, partitions[0].events())
    pipe = client.pipeline(transaction=False)
    _first_round(pipe, partitions)
    rows = _cursors(pipe.execute(), partitions)
    pipe = client.pipeline(transaction=False)
    _second_round(pipe, partitions, rows)
    return _lags(node.name, now, partitions, rows, pipe.execute())


async def _read_node_async(client: AsyncClient, keyspace: Keyspace, node: Node) -> list[PartitionLag]:
    partitions = [keyspace.partition(p) for p in node.partitions]
    now = await now_ms_async(client, partitions[0].events())
    pipe = client.pipeline(transaction=False)
    _first_round(pipe, partitions)
    rows = _cursors(await pipe.execute(), partitions)
    pipe = client.pipeline(transaction=False)
    _second_round(pipe, partitions, rows)
    return _lags(node.name, now, partitions, rows, await pipe.execute())


def read_lag(client: SyncClient, keyspace: Keyspace) -> list[PartitionLag]:
    """Lag of every partition, by partition (sync client, one Redis or a cluster)."""
    lags: list[PartitionLag] = []
    for node in partition_nodes(client, keyspace):
        try:
            lags += _read_node(client, keyspace, node)
        except NODE_ERRORS as error:
            lags += _down(node, error)
    return sorted(lags, key=lambda lag: lag.partition)


async def read_lag_async(client: AsyncClient, keyspace: Keyspace) -> list[PartitionLag]:
    """Lag of every partition, by partition (asyncio client, one Redis or a cluster)."""
    lags: list[PartitionLag] = []
    for node in await partition_nodes_async(client, keyspace):
        try:
            lags += await _read_node_async(client, keyspace, node)
        except NODE_ERRORS as error:
            lags += _down(node, error)
    return sorted(lags, key=lambda lag: lag.partition)
