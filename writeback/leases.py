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

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable
from typing import TypeVar

from flashsale.engine.keys import Keyspace
from flashsale.engine.nodes import AsyncClient
from flashsale.engine.scripts import assemble
from flashsale.writeback.clock import now_ms_async
from flashsale.writeback.lag import NODE_ERRORS, node_of

log = logging.getLogger("flashsale.writeback")

T = TypeVar("T")


class Leases:
    def __init__(self, client: AsyncClient, keyspace: Keyspace, worker_id: str, lease_ms: int) -> None:
        self.redis = client
        self.keyspace = keyspace
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self._renew = client.register_script(assemble("lease_renew"))
        self._release = client.register_script(assemble("lease_release"))
        self._live = 1
        # Nodes that did not answer, skipped until then (monotonic s): one timeout a lease, not one a round.
        self._down_until: dict[str, float] = {}

    async def heartbeat(self, owned: set[int]) -> int:
        """Records this worker as alive; returns the number of live workers (this one included), or the
        last count while the registry's node does not answer."""
        registry = self.keyspace.writeback_workers()
        node = node_of(self.redis, registry)
        if self._skipped(node):
            return self._live
        try:
            now = await self._bounded(now_ms_async(self.redis, registry))  # the registry's clock for all
            pipe = self.redis.pipeline(transaction=False)  # one key, so one node
            pipe.zadd(registry, {self.worker_id: now})
            pipe.zremrangebyscore(registry, "-inf", now - self.lease_ms)
            pipe.zcard(registry)
            replies = await self._bounded(pipe.execute())
            self._live = int(replies[2])
        except NODE_ERRORS as error:
            self._mark_down(node, "heartbeat", None, error)
            return self._live
        # What this worker holds, for operators and tests: a key of its own (another slot).
        mine = self.keyspace.writeback_worker(self.worker_id)
        node = node_of(self.redis, mine)
        if not self._skipped(node):
            try:
                partitions = ",".join(str(p) for p in sorted(owned))
                await self._bounded(self.redis.set(mine, partitions, px=self.lease_ms))
            except NODE_ERRORS as error:
                self._mark_down(node, "heartbeat", None, error)
        return self._live

    async def _bounded(self, call: Awaitable[T]) -> T:
        """A lease command that answers within a sixth of the lease, else TimeoutError: a node that hangs
        (frozen, or a host gone without a reset) must not hold the renewal of the other partitions past
        their lease."""
        return await asyncio.wait_for(call, self.lease_ms / 6000)

    def _skipped(self, node: str) -> bool:
        return self._down_until.get(node, 0.0) > time.monotonic()

    def _mark_down(self, node: str, what: str, partition: int | None, error: BaseException) -> None:
        self._down_until[node] = time.monotonic() + self.lease_ms / 1000
        log.warning(
            "event=lease_node_down worker=%s node=%s during=%s partition=%s error=%r",
            self.worker_id, node, what, "-" if partition is None else partition, repr(error)[:200],
        )  # fmt: skip

    def fair_share(self, live_workers: int) -> int:
        return math.ceil(self.keyspace.partitions / max(live_workers, 1))

    async def renew(self, partitions: set[int]) -> set[int]:
        """Renews the leases held, each node's at the same time; returns those still ours (a lease that
        expired meanwhile is lost, and so is one whose node does not answer: nobody can drain that
        partition until the node is back)."""
        by_node: dict[str, list[int]] = {}
        for p in sorted(partitions):
            lease = self.keyspace.partition(p).writeback_lease()
            by_node.setdefault(node_of(self.redis, lease), []).append(p)
        kept = await asyncio.gather(*(self._renew_on(node, ps) for node, ps in by_node.items()))
        return set().union(*kept)

    async def _renew_on(self, node: str, partitions: list[int]) -> set[int]:
        kept: set[int] = set()
        if self._skipped(node):
            return kept
        for p in partitions:
            key = self.keyspace.partition(p).writeback_lease()
            try:
                if await self._bounded(self._renew(keys=[key], args=[self.worker_id, self.lease_ms])):
                    kept.add(p)
            except NODE_ERRORS as error:
                self._mark_down(node, "renew", p, error)
                break
        return kept

    async def acquire(self, owned: set[int], want: int) -> set[int]:
        """Takes free partitions until this worker holds ``want``; returns the newly acquired ones.

        Starts at a different partition per worker so concurrent workers do not race for the same ones;
        skips the partitions of a node that did not answer lately.
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
            node = node_of(self.redis, key)
            if self._skipped(node):
                continue
            try:
                if await self._bounded(self.redis.set(key, self.worker_id, nx=True, px=self.lease_ms)):
                    acquired.add(p)
            except NODE_ERRORS as error:
                self._mark_down(node, "acquire", p, error)
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
