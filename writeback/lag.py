"""Write-behind lag per partition, read from Redis alone (the API and CLI need no worker process).

For each partition: ``pending`` = events in the stream that PostgreSQL or Kafka has not taken yet,
``oldest_age_ms`` = how long the oldest of them has waited (Redis's clock; 0 when none), the stream ids
each sink has taken, and the worker holding the partition's lease. The worker trims each stream below
what both sinks took, so the stream holds little besides pending events and the count is cheap.

    from flashsale.writeback.lag import read_lag, total_lag
    lags = read_lag(redis.Redis.from_url(url), keyspace)           # sync (CLI)
    lags = await read_lag_async(aioredis.Redis.from_url(url), keyspace)  # asyncio (API, metrics)
    total_lag(lags).pending, total_lag(lags).oldest_age_ms
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis
from flashsale.engine.events import stream_id_key
from flashsale.engine.keys import Keyspace
from flashsale.writeback.stalls import STALL_FIELDS, Stall, stall_from_fields

# (applied, published, cursor = the lesser of the two, lease owner, stream length, stall mark)
_Row = tuple[str, str, str, str | None, int, Stall | None]

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


def total_lag(lags: list[PartitionLag]) -> PartitionLag:
    """The sum of pending events and the worst age over all partitions (partition = -1)."""
    return PartitionLag(
        partition=-1,
        pending=sum(lag.pending for lag in lags),
        oldest_age_ms=max((lag.oldest_age_ms for lag in lags), default=0),
        applied_id="",
        published_id="",
        owner=None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_round(pipe: Any, keyspace: Keyspace) -> None:
    pipe.time()
    for p in keyspace.all():
        pipe.hmget(p.writeback_progress(), "applied", "published", *STALL_FIELDS)
        pipe.get(p.writeback_lease())
        pipe.xlen(p.events())


def _cursors(replies: list[Any], keyspace: Keyspace) -> tuple[int, list[_Row]]:
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    rows = []
    for i in range(keyspace.partitions):
        progress, owner, length = replies[1 + 3 * i : 4 + 3 * i]
        applied = _text(progress[0]) or "0-0"
        published = _text(progress[1]) or "0-0"
        cursor = min(applied, published, key=stream_id_key)
        stall = stall_from_fields(i, dict(zip(STALL_FIELDS, progress[2:], strict=True)))
        rows.append((applied, published, cursor, _text(owner), int(length), stall))
    return now_ms, rows


def _second_round(pipe: Any, keyspace: Keyspace, rows: list[_Row]) -> None:
    for p, (_applied, _published, cursor, _owner, _length, _stall) in zip(keyspace.all(), rows, strict=True):
        pipe.xrange(p.events(), f"({cursor}" if cursor != "0-0" else "-", "+", count=1)
        pipe.xrange(p.events(), "-", cursor, count=_TAKEN_SCAN_LIMIT)


def _lags(now_ms: int, rows: list[_Row], replies: list[Any]) -> list[PartitionLag]:
    lags = []
    for i, (applied, published, _cursor, owner, length, stall) in enumerate(rows):
        oldest, taken = replies[2 * i], replies[2 * i + 1]
        pending = max(length - len(taken), 0)
        age = 0
        if oldest:
            age = max(now_ms - stream_id_key(_text(oldest[0][0]) or "0-0")[0], 0)
        lags.append(
            PartitionLag(
                partition=i,
                pending=pending,
                oldest_age_ms=age,
                applied_id=applied,
                published_id=published,
                owner=owner,
                stalled_event=stall.event_id if stall else None,
                stalled_sink=stall.sink if stall else None,
                stalled_error=stall.error if stall else None,
                stalled_at_ms=stall.at_ms if stall else None,
            )
        )
    return lags


def read_lag(client: redis.Redis, keyspace: Keyspace) -> list[PartitionLag]:
    """Lag of every partition (sync client)."""
    pipe = client.pipeline(transaction=False)
    _first_round(pipe, keyspace)
    now_ms, rows = _cursors(pipe.execute(), keyspace)
    pipe = client.pipeline(transaction=False)
    _second_round(pipe, keyspace, rows)
    return _lags(now_ms, rows, pipe.execute())


async def read_lag_async(client: aioredis.Redis, keyspace: Keyspace) -> list[PartitionLag]:
    """Lag of every partition (asyncio client)."""
    pipe = client.pipeline(transaction=False)
    _first_round(pipe, keyspace)
    now_ms, rows = _cursors(await pipe.execute(), keyspace)
    pipe = client.pipeline(transaction=False)
    _second_round(pipe, keyspace, rows)
    return _lags(now_ms, rows, await pipe.execute())
