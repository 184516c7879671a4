"""Partition leases: each partition stream has at most one active consumer, and live workers split them.

A lease is a Redis string ``SET NX PX``: whoever set it owns the partition until it expires; the owner
renews it (compare-and-set in ``lua/lease_renew.lua``, so a worker never extends a lease it lost).
Workers heartbeat into a sorted set; each takes at most its fair share (partitions / live workers,
rounded up), so a second worker gets half, and when one dies its leases expire and the survivor takes
them over.
"""

from __future__ import annotations

import math
import zlib

import redis.asyncio as aioredis
from flashsale.engine.keys import Keyspace
from flashsale.engine.scripts import assemble


class Leases:
    def __init__(self, client: aioredis.Redis, keyspace: Keyspace, worker_id: str, lease_ms: int) -> None:
        self.redis = client
        self.keyspace = keyspace
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self._renew = client.register_script(assemble("lease_renew"))
        self._release = client.register_script(assemble("lease_release"))

    async def heartbeat(self, owned: set[int]) -> int:
        """Records this worker as alive; returns the number of live workers (this one included)."""
        now_s, now_us = await self.redis.time()
        now = now_s * 1000 + now_us // 1000
        registry = self.keyspace.writeback_workers()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(registry, {self.worker_id: now})
        pipe.zremrangebyscore(registry, "-inf", now - self.lease_ms)
        pipe.zcard(registry)
        pipe.set(
            self.keyspace.writeback_worker(self.worker_id),
            ",".join(str(p) for p in sorted(owned)),
            px=self.lease_ms,
        )
        replies = await pipe.execute()
        return int(replies[2])

    def fair_share(self, live_workers: int) -> int:
        return math.ceil(self.keyspace.partitions / max(live_workers, 1))

    async def renew(self, partitions: set[int]) -> set[int]:
        """Renews the leases held; returns those still ours (a lease that expired meanwhile is lost)."""
        kept: set[int] = set()
        for p in sorted(partitions):
            key = self.keyspace.partition(p).writeback_lease()
            if await self._renew(keys=[key], args=[self.worker_id, self.lease_ms]):
                kept.add(p)
        return kept

    async def acquire(self, owned: set[int], want: int) -> set[int]:
        """Takes free partitions until this worker holds ``want``; returns the newly acquired ones.

        Starts at a different partition per worker so concurrent workers do not race for the same ones.
        """
        acquired: set[int] = set()
        total = self.keyspace.partitions
        start = zlib.crc32(self.worker_id.encode()) % total
        for i in range(total):
            if len(owned) + len(acquired) >= want:
                break
            p = (start + i) % total
            if p in owned:
                continue
            key = self.keyspace.partition(p).writeback_lease()
            if await self.redis.set(key, self.worker_id, nx=True, px=self.lease_ms):
                acquired.add(p)
        return acquired

    async def release(self, partition: int) -> None:
        lease = self.keyspace.partition(partition).writeback_lease()
        await self._release(keys=[lease], args=[self.worker_id])

    async def holder(self, partition: int) -> str | None:
        value = await self.redis.get(self.keyspace.partition(partition).writeback_lease())
        return None if value is None else str(value)

    async def leave(self) -> None:
        """Removes this worker from the registry so the others rebalance without waiting for expiry."""
        await self.redis.zrem(self.keyspace.writeback_workers(), self.worker_id)
        await self.redis.delete(self.keyspace.writeback_worker(self.worker_id))
