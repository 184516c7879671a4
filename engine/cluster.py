"""Redis Cluster for the asyncio client: which node serves each slot, and auto-pipelining per node.

Every key of one script call carries its partition's hash tag, so a call has one slot and one node. The
router sends it to that node's auto-pipeline (``engine.pipelining``, one per node, each with its own
blocking connection pool): calls made in one loop turn leave as one pipeline per node, and a pipeline never
mixes nodes. The sync client needs none of this: redis-py's ``RedisCluster`` routes and redirects for it.

What the router does with the cluster's answers (none of which means the script ran):
  MOVED slot host:port   the slot has a new owner: remember it, refresh the whole map in the background
                         (a MOVED rarely comes alone), send the call there.
  ASK slot host:port     the slot is migrating and its keys are not all here: send the call once to that
                         node, behind ASKING on the same connection (``_asking``), outside the pipelines.
  TRYAGAIN               the slot is migrating and its keys are split between the two nodes (any call that
                         creates a key, e.g. every reserve, gets this until the migration ends): wait a
                         little and send again, until ``redirect_timeout`` has passed.
  CLUSTERDOWN            no node serves the slot right now (a failover): refresh the map, wait, send again,
                         within the same time.
A connection error fails the calls of that pipeline, as on one Redis: the caller cannot know whether its
script ran, so nothing is re-sent (reserve and checkout take idempotency keys); the map is refreshed so the
next calls find a promoted replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .pipelining import AutoPipeline, _pack, release_when_replicated

log = logging.getLogger("flashsale.engine.cluster")

SLOTS = 16384
# Redirections one call may follow before the router gives up (redis-py's RedisClusterRequestTTL).
MAX_REDIRECTS = 16

# The error replies the router acts on, by their first word.
_MOVED, _ASK, _TRYAGAIN, _CLUSTERDOWN = "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"
_CLUSTER_REPLIES = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")

Address = tuple[str, int]
ScriptLoader = Callable[[aioredis.Redis], Awaitable[None]]


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


class ClusterUnavailable(RedisError):
    """No node answered for the slot map, or the cluster kept redirecting a call past its time."""


class SlotMap:
    """Slot -> the address of the master serving it, as CLUSTER SLOTS said (Redis 6.2 has no SHARDS)."""

    def __init__(self) -> None:
        self.owners: list[Address | None] = [None] * SLOTS

    def update(self, reply: Sequence[Any], asked: Address) -> None:
        """From a CLUSTER SLOTS reply: [[first, last, [host, port, id], replica...], ...]."""
        owners: list[Address | None] = [None] * SLOTS
        for row in reply:
            first, last, master = int(row[0]), int(row[1]), row[2]
            host = _text(master[0]) or asked[0]  # a node that never learnt its own address says ""
            address = (host, int(master[1]))
            owners[first : last + 1] = [address] * (last - first + 1)
        self.owners = owners

    def masters(self) -> set[Address]:
        return {a for a in self.owners if a is not None}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterRouter:
    """Routes packed commands to the auto-pipeline of the node serving their slot (see the module)."""

    def __init__(
        self,
        startup: Sequence[Address],
        connection_kwargs: dict[str, Any],
        *,
        max_connections: int = 32,
        pool_timeout: float = 10.0,
        max_batch: int = 256,
        max_inflight: int = 4,
        redirect_timeout: float = 10.0,
        wait: tuple[int, int] | None = None,
    ) -> None:
        self._startup = list(startup)
        # WAIT mode: (replicas, timeout ms) for every node's pipeline (engine.pipelining), or None.
        self._wait = wait
        self._kwargs = connection_kwargs
        # Loads every script into one node (the engine sets it: it owns the scripts).
        self.load_scripts: ScriptLoader = _no_scripts
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self.redirect_timeout = redirect_timeout
        self.slots = SlotMap()
        self._clients: dict[Address, aioredis.Redis] = {}
        self._lanes: dict[Address, AutoPipeline] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self.refreshes = 0  # how often the map was read (tests and metrics)
        self.redirections: Counter[str] = Counter()  # MOVED, ASK, TRYAGAIN, CLUSTERDOWN answers met

    # -- nodes ------------------------------------------------------------------------------------------
    def client(self, address: Address) -> aioredis.Redis:
        """A redis-py client of one node, over that node's blocking pool (shared with its pipeline)."""
        client = self._clients.get(address)
        if client is None:
            pool = aioredis.BlockingConnectionPool(
                host=address[0],
                port=address[1],
                max_connections=self._max_connections,
                timeout=self._pool_timeout,
                **self._kwargs,
            )
            client = self._clients[address] = aioredis.Redis(connection_pool=pool)
        return client

    def _lane(self, address: Address) -> AutoPipeline:
        lane = self._lanes.get(address)
        if lane is None:
            client = self.client(address)
            lane = self._lanes[address] = AutoPipeline(
                client,
                lambda: self.load_scripts(client),
                max_batch=self._max_batch,
                max_inflight=self._max_inflight,
                wait=self._wait,
            )
        return lane

    def masters(self) -> list[aioredis.Redis]:
        """A client of every master in the current map (load scripts, flush, fan-out reads)."""
        return [self.client(a) for a in sorted(self.slots.masters())]

    # -- the slot map -----------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Reads the slot map again; concurrent callers share one read."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_map())
        await asyncio.shield(self._refreshing)

    def _refresh_soon(self) -> None:
        """A refresh in the background, unless one is running: a dead node fails a whole pipeline at
        once, and its calls must not each start a read of the map (nor each log its failure)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = task = asyncio.ensure_future(self._read_map())
            task.add_done_callback(_ignore_failure)

    async def _read_map(self) -> None:
        known = [*sorted(self.slots.masters()), *self._startup]
        candidates = list(dict.fromkeys(known))  # known masters first, then the startup nodes
        last: Exception | None = None
        for address in candidates:
            try:
                reply = await self.client(address).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as error:
                last = error
                continue
            self.slots.update(reply, address)
            self.refreshes += 1
            log.debug("event=slot_map_read from=%s:%d masters=%d", *address, len(self.slots.masters()))
            return
        raise ClusterUnavailable(f"no cluster node answered CLUSTER SLOTS ({candidates}): {last}")

    async def _owner(self, slot: int) -> Address:
        address = self.slots.owners[slot]
        if address is None:
            await self.refresh()
            address = self.slots.owners[slot]
            if address is None:
                raise ClusterUnavailable(f"CLUSTERDOWN no node serves slot {slot}")
        return address

    # -- calls ------------------------------------------------------------------------------------------
    async def evalsha(self, sha: str, keys: tuple[str, ...], args: tuple[str | int, ...]) -> Any:
        """One script call (the signature of ``AutoPipeline.evalsha``). The hot path: ``execute`` inlined,
        so a call costs one coroutine frame more than on one Redis, not two."""
        packed = _pack(sha, keys, args)
        slot = key_slot(keys[0].encode())
        address = self.slots.owners[slot]
        if address is None:
            address = await self._owner(slot)
        lane = self._lanes.get(address) or self._lane(address)
        try:
            return await lane.submit(packed, True)
        except ResponseError as error:
            if not str(error).startswith(_CLUSTER_REPLIES):
                raise  # the engine's own answer (a refusal): the common case, kept short
            return await self._redirected(slot, packed, error, writes=True)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._refresh_soon()  # a dead node: the next calls look for its replacement
            raise

    async def command(self, key: str, *command: str | int) -> Any:
        """A plain one-key command (the engine's reads), auto-pipelined with the scripts of its node."""
        packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub wants a 1-tuple
        return await self.execute(key_slot(key.encode()), packed)

    async def execute(self, slot: int, packed: bytes) -> Any:
        """A packed command for ``slot``, redirections followed."""
        address = self.slots.owners[slot]
        if address is None:
            address = await self._owner(slot)
        try:
            return await self._lane(address).submit(packed)
        except ResponseError as error:
            if not str(error).startswith(_CLUSTER_REPLIES):
                raise
            return await self._redirected(slot, packed, error)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._refresh_soon()
            raise

    async def _redirected(
        self, slot: int, packed: bytes, error: ResponseError, *, writes: bool = False
    ) -> Any:
        """Follows MOVED, ASK, TRYAGAIN and CLUSTERDOWN until the call gets a real answer (module doc)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.redirect_timeout
        redirects, pause = 0, 0.002
        while True:
            word, *rest = str(error).split(" ")
            self.redirections[word] += 1
            if word == _MOVED:
                redirects += 1
                self.slots.owners[slot] = _address(rest[1])
                self._refresh_soon()
                ask_to = None
            elif word == _ASK:
                redirects += 1
                ask_to = _address(rest[1])
            else:  # TRYAGAIN, CLUSTERDOWN: nothing ran; wait and send to the owner again
                if loop.time() + pause > deadline:
                    raise error
                # Waiting is bounded by time: the ASK that led here is no ping-pong to count.
                redirects = 0
                if word == _CLUSTERDOWN:
                    self._refresh_soon()
                await asyncio.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.1)
                ask_to = None
            if redirects > MAX_REDIRECTS:
                raise ClusterUnavailable(f"slot {slot}: more than {MAX_REDIRECTS} redirections ({error})")
            try:
                if ask_to is not None:
                    return await self._asking(ask_to, packed, writes)
                return await self._lane(await self._owner(slot)).submit(packed, writes)
            except ResponseError as again:
                if not str(again).startswith(_CLUSTER_REPLIES):
                    raise
                error = again
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._refresh_soon()
                raise

    async def _asking(self, address: Address, packed: bytes, writes: bool) -> Any:
        """ASKING and the call on one connection of the importing node, outside its pipeline (ASKING
        holds for the next command of that connection only), and in WAIT mode the WAIT after it. A
        NOSCRIPT there: load, and once more."""
        client = self.client(address)
        for attempt in (1, 2):
            connection: AbstractConnection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                asking: bytes = hiredis.pack_command(("ASKING",))
                commands = [asking, packed]
                if writes and self._wait is not None:
                    commands.append(hiredis.pack_command(("WAIT", *self._wait)))  # type: ignore[arg-type]
                replies = await AutoPipeline._round_trip(connection, commands)
            except BaseException:
                await asyncio.shield(connection.disconnect(nowait=True))
                raise
            finally:
                await client.connection_pool.release(connection)
            if len(replies) == 3:
                replies = release_when_replicated(replies, [False, True], self._wait)  # type: ignore[arg-type]
            reply = replies[1]
            if isinstance(reply, NoScriptError) and attempt == 1:
                await self.load_scripts(client)
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for lane in self._lanes.values():
            await lane.close()
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in self._clients.values():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        self._clients.clear()
        self._lanes.clear()


async def _no_scripts(client: aioredis.Redis) -> None:
    raise RuntimeError("ClusterRouter.load_scripts was not set")


def _ignore_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("event=slot_map_refresh_failed error=%s", task.exception())
