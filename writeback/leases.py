"""Partition leases: each partition stream has at most one active consumer, and live workers split them.

A lease is a Redis string ``SET NX PX``: whoever set it owns the partition until it expires; the owner
renews it (compare-and-set in ``lua/lease_renew.lua``, so a worker never extends a lease it lost).
Workers heartbeat into a sorted set; each takes at most its fair share (partitions / live workers,
rounded up), so a second worker gets half, and when one dies its leases expire and the survivor takes
them over.

On a Redis Cluster a partition's lease lives on the node of its stream (``{pN}`` keys), so a node that is
down holds back only its own partitions: renewing or taking one of them fails alone, and the others go
on. The registry has a node of its own; while it does not answer, the last count of live workers stands.
"""

from __future__ import annotations

import logging
import math
import zlib

from flashsale.engine.keys import Keyspace
from flashsale.engine.nodes import AsyncClient
from flashsale.engine.scripts import assemble
from flashsale.writeback.clock import now_ms_async
from flashsale.writeback.lag import NODE_ERRORS, node_of

log = logging.getLogger("flashsale.writeback")


class Leases:
    def __init__(self, client: AsyncClient, keyspace: Keyspace, worker_id: str, lease_ms: int) -> None:
        self.redis = client
        self.keyspace = keyspace
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self._renew = client.register_script(assemble("lease_renew"))
        self._release = client.register_script(assemble("lease_release"))
        self._live = 1

    async def heartbeat(self, owned: set[int]) -> int:
        """Records this worker as alive; returns the number of live workers (this one included), or the
        last count while the registry's node does not answer."""
        registry = self.keyspace.writeback_workers()
        try:
            now = await now_ms_async(self.redis, registry)  # the registry's clock scores every worker
            pipe = self.redis.pipeline(transaction=False)  # one key, so one node
            pipe.zadd(registry, {self.worker_id: now})
            pipe.zremrangebyscore(registry, "-inf", now - self.lease_ms)
            pipe.zcard(registry)
            replies = await pipe.execute()
            self._live = int(replies[2])
            # What this worker holds, for operators and tests: a key of its own (another slot).
            partitions = ",".join(str(p) for p in sorted(owned))
            await self.redis.set(self.keyspace.writeback_worker(self.worker_id), partitions, px=self.lease_ms)
        except NODE_ERRORS as error:
            log.warning("event=heartbeat_failed worker=%s error=%r", self.worker_id, str(error)[:200])
        return self._live

    def fair_share(self, live_workers: int) -> int:
        return math.ceil(self.keyspace.partitions / max(live_workers, 1))

    async def renew(self, partitions: set[int]) -> set[int]:
        """Renews the leases held; returns those still ours (a lease that expired meanwhile is lost, and
        so is one whose node does not answer: nobody can drain that partition until it is back)."""
        kept: set[int] = set()
        down: set[str] = set()
        for p in sorted(partitions):
            key = self.keyspace.partition(p).writeback_lease()
            node = node_of(self.redis, key)
            if node in down:
                continue
            try:
                if await self._renew(keys=[key], args=[self.worker_id, self.lease_ms]):
                    kept.add(p)
            except NODE_ERRORS as error:
                down.add(node)
                log.warning(
                    "event=lease_renew_failed worker=%s partition=%d node=%s error=%r",
                    self.worker_id, p, node, str(error)[:200],
                )  # fmt: skip
        return kept

    async def acquire(self, owned: set[int], want: int) -> set[int]:
        """Takes free partitions until this worker holds ``want``; returns the newly acquired ones.

        Starts at a different partition per worker so concurrent workers do not race for the same ones;
        skips the partitions of a node that did not answer this round.
        """
        acquired: set[int] = set()
        down: set[str] = set()
        total = self.keyspace.partitions
        start = zlib.crc32(self.worker_id.encode()) % total
        for i in range(total):
            if len(owned) + len(acquired) >= want:
                break
            p = (start + i) % total
            if p in owned:
                continue
            key = self.keyspace.partition(p).writeback_lease()
            node = node_of(self.redis, key)
            if node in down:
                continue
            try:
                if await self.redis.set(key, self.worker_id, nx=True, px=self.lease_ms):
                    acquired.add(p)
            except NODE_ERRORS as error:
                down.add(node)
                log.warning(
                    "event=lease_acquire_failed worker=%s partition=%d node=%s error=%r",
                    self.worker_id, p, node, str(error)[:200],
                )  # fmt: skip
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
