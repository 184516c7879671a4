"""The waiting rooms' admitter: lets shoppers in at each room's rate, one worker per sale.

Each sale with a waiting room (lua/set_waiting_room.lua) has a lease, ``fs:{pN}:wr:lease:<sku>``, taken
with ``SET NX PX`` and renewed by compare-and-set like the partition leases (writeback.leases), so exactly
one worker admits to a sale at a time; when it dies, another takes the lease once it lapses. About ten
times a second the holder runs ``lua/queue_admit.lua``, which checks the lease itself (a stalled worker
that lost it admits nobody), ends lapsed admissions, and admits the next shoppers by a token bucket kept
in the room's own hash: a restarted or new admitter carries on from Redis, with nothing kept here but
which leases it holds.

On a Redis Cluster each room's keys live on its partition's node; a node that is down holds back only its
rooms (the others are discovered and admitted to as usual).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis
from flashsale.engine import AsyncEngine
from flashsale.engine.keys import Keyspace
from flashsale.engine.nodes import AsyncClient
from flashsale.engine.scripts import assemble
from flashsale.writeback.lag import node_of

log = logging.getLogger("flashsale.writeback.admitter")

T = TypeVar("T")


@dataclass(slots=True)
class AdmitterStats:
    admitted: int = 0  # shoppers this worker let in
    sent_away: int = 0  # shoppers told SOLD_OUT
    steps: int = 0


class Admitter:
    def __init__(
        self,
        engine: AsyncEngine,
        client: AsyncClient,
        keyspace: Keyspace,
        worker_id: str,
        lease_ms: int,
        *,
        batch: int = 1000,
    ) -> None:
        self.engine = engine
        self.redis = client
        self.keyspace = keyspace
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.batch = batch
        self.stats = AdmitterStats()
        self.rooms: list[str] = []  # the SKUs whose sale has a waiting room on
        self.held: dict[str, float] = {}  # sku -> monotonic time its lease was last taken or renewed
        self._renew = client.register_script(assemble("lease_renew"))
        self._release = client.register_script(assemble("lease_release"))

    async def discover(self) -> list[str]:
        """The SKUs whose sale has a waiting room on (each partition's catalog and its sales' flags, one
        pipeline per partition); a partition whose node does not answer keeps the rooms it had."""
        rooms: list[str] = []
        down: set[str] = set()
        for p in self.keyspace.all():
            node = node_of(self.redis, p.catalog())
            try:
                if node in down:
                    raise redis.ConnectionError(f"node {node} did not answer")
                skus = sorted(str(sku) for sku in await self._bounded(self.redis.smembers(p.catalog())))
                pipe = self.redis.pipeline(transaction=False)  # one partition: one node
                for sku in skus:
                    pipe.hget(p.sku(sku), "waiting_room")
                flags = await self._bounded(pipe.execute())
                rooms += [sku for sku, on in zip(skus, flags, strict=True) if on == "1"]
            except (redis.RedisError, OSError) as error:
                rooms += [sku for sku in self.rooms if self.keyspace.for_sku(sku).index == p.index]
                if node not in down:
                    down.add(node)
                    log.warning(
                        "event=admitter_discover_failed worker=%s node=%s error=%r",
                        self.worker_id, node, str(error)[:200],
                    )  # fmt: skip
        self.rooms = sorted(rooms)
        for sku in set(self.held) - set(self.rooms):  # a room turned off: let its lease go
            await self._bounded(self._give_up(sku))
        return self.rooms

    async def step(self) -> None:
        """One round: take or renew each room's lease, then admit in the rooms held."""
        down: set[str] = set()
        for sku in self.rooms:
            node = node_of(self.redis, self.keyspace.for_sku(sku).sku(sku))
            if node in down:
                continue
            try:  # per room, bounded: a node that is down or hangs holds back only its own rooms
                if not await self._bounded(self._hold(sku)):
                    continue
                outcome = await self._bounded(self.engine.admit(sku, self.worker_id, self.batch))
            except (redis.RedisError, OSError) as error:  # OSError: TimeoutError too
                down.add(node)
                log.warning("event=admit_failed worker=%s sku=%s error=%r", self.worker_id, sku, repr(error))
                continue
            self.stats.steps += 1
            if outcome.outcome == "LEASE_LOST":
                self.held.pop(sku, None)
                log.warning("event=admitter_lease_lost worker=%s sku=%s", self.worker_id, sku)
                continue
            self.stats.admitted += outcome.admitted
            self.stats.sent_away += outcome.sent_away
            if outcome.sent_away:
                sent = outcome.sent_away
                log.info("event=queue_sold_out worker=%s sku=%s sent_away=%d", self.worker_id, sku, sent)

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Within a sixth of the lease (as the partition leases): one hung node must not stop the rest."""
        return await asyncio.wait_for(call, self.lease_ms / 6000)

    async def _hold(self, sku: str) -> bool:
        lease = self.keyspace.for_sku(sku).admitter_lease(sku)
        now = time.monotonic()
        taken = self.held.get(sku)
        if taken is None:
            if not await self.redis.set(lease, self.worker_id, nx=True, px=self.lease_ms):
                return False
            self.held[sku] = now
            log.info("event=admitter_acquired worker=%s sku=%s", self.worker_id, sku)
            return True
        if now - taken > self.lease_ms / 3000:
            if not await self._renew(keys=[lease], args=[self.worker_id, self.lease_ms]):
                self.held.pop(sku, None)
                log.warning("event=admitter_lease_lost worker=%s sku=%s", self.worker_id, sku)
                return False
            self.held[sku] = now
        return True

    async def _give_up(self, sku: str) -> None:
        self.held.pop(sku, None)
        await self._release(keys=[self.keyspace.for_sku(sku).admitter_lease(sku)], args=[self.worker_id])

    async def release_all(self) -> None:
        """Lets every lease go (a clean stop), so another worker takes over at once."""
        for sku in list(self.held):
            await self._give_up(sku)
