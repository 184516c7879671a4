"""The write-behind worker: drains each partition's Redis stream into PostgreSQL and Kafka.

Per partition it holds (one task per leased partition):

    loop:  XRANGE the next batch after min(applied, published)
           PostgreSQL: one transaction for the events after `applied` (writeback.postgres)
           Kafka: publish the events after `published`, wait for every acknowledgement (writeback.kafka)
           record both ids in Redis, XTRIM MINID below the lesser of the two

``applied`` is read from PostgreSQL (stored in the same transaction as the rows, so exact); ``published``
from Redis (written after the broker acknowledged, so a crash can only make it lag: events are then
published again, never skipped). While a sink is down the partition waits on it, retrying with growing
backoff (PostgreSQL first, then Kafka, per batch), so the lag grows and nothing is skipped; the hot path
never waits on any of this.

Library use (tests, bench, ``flashsale up``)::

    worker = Worker(settings, WorkerOptions(sweep=False))
    await worker.run()                    # until worker.stop()
    # or, from sync code, on a background thread:
    with WorkerThread(settings) as worker:
        worker.wait_drained(timeout_s=30)  # True once every stream is fully in PostgreSQL and Kafka
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from flashsale.engine import AsyncEngine, FlashSaleError
from flashsale.engine.client import async_redis_client, redis_client
from flashsale.engine.events import Event, UnknownEvent, parse_entry, stream_id_key
from flashsale.engine.nodes import AsyncClient
from flashsale.engine.settings import Settings
from flashsale.writeback import stalls
from flashsale.writeback.admitter import Admitter
from flashsale.writeback.batch import Batch
from flashsale.writeback.kafka import Publisher, PublishFailed, ensure_topics
from flashsale.writeback.lag import nodes_down, read_lag, read_lag_async, total_lag
from flashsale.writeback.leases import Leases
from flashsale.writeback.messages import Topics
from flashsale.writeback.payments import GatewayError, PaymentGateway, SimulatedGateway
from flashsale.writeback.postgres import apply_batch, ensure_offset, unapplied
from flashsale.writeback.settlement import Settlement
from flashsale.writeback.stalls import PermanentSinkError, is_permanent
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

log = logging.getLogger("flashsale.writeback")

T = TypeVar("T")

# How long one partition's expiry step may take before the sweeper moves on to the next partition.
_SWEEP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Knobs of one worker; None means the value from Settings."""

    worker_id: str | None = None  # default: <hostname>-<pid>-<random>
    sweep: bool = True  # run the expiry sweeper on the partitions this worker holds
    settle: bool = True  # run payment settlement (writeback.settlement) on the partitions this worker holds
    settle_interval_ms: int = 1000
    admit: bool = True  # admit shoppers from the waiting rooms whose lease it takes (writeback.admitter)
    admit_interval_ms: int = 100
    trim: bool = True  # trim streams below what both sinks took (off: keep the whole log, e.g. to replay)
    batch_size: int | None = None  # Settings.worker_batch_size
    lease_ms: int | None = None  # Settings.worker_lease_ms
    idle_poll_ms: int = 50  # how often an empty stream is looked at again
    retry_max_s: float = 5.0  # ceiling of the backoff while a sink is down
    message_timeout_ms: int = 30_000  # Kafka: a message not acknowledged by then fails and is sent again
    create_topics: bool = True
    topic_replication: int = -1  # -1: the broker's default
    postgres_pool_size: int = 4
    stop_timeout_s: float = 10.0  # on stop: how long a batch in flight may take before it is abandoned


@dataclass(slots=True)
class WorkerStats:
    applied_events: int = 0  # events committed to PostgreSQL
    published_events: int = 0  # events acknowledged by Kafka
    published_messages: int = 0  # Kafka messages (an event goes to one to three topics)
    batches: int = 0
    expired: int = 0  # reservations the sweeper ended
    transfers_finished: int = 0  # stock-bucket transfers the sweeper finished after a crash cut them
    stalls: int = 0  # partitions stopped on an event a sink can never take (writeback.stalls)
    settled: int = 0  # payments settlement captured, voided, refunded or finalized
    admitted: int = 0  # shoppers the admitter let in
    sink_failures: dict[str, int] = field(default_factory=lambda: {"postgres": 0, "kafka": 0})


@dataclass(slots=True)
class _PostgresAttempt:
    applied: str
    pending: list[Event]
    failed: bool = False


class _Abandon(Exception):
    """The partition's batch is given up: the worker stops or lost the lease. Nothing half-done remains."""


def _parse(p: int, entries: Any) -> tuple[list[Event], PermanentSinkError | None]:
    """The readable events up to the first entry this worker cannot read, and that entry's error."""
    events: list[Event] = []
    for stream_id, fields in entries:
        try:
            events.append(parse_entry(p, stream_id, fields))
        except UnknownEvent as error:
            return events, PermanentSinkError("worker", stream_id, error)
    return events, None


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        options: WorkerOptions | None = None,
        *,
        gateway: PaymentGateway | None = None,  # settlement's gateway; default: the simulated one
    ) -> None:
        if not settings.redis_url or not settings.database_url or not settings.kafka_bootstrap:
            raise ValueError(
                "the worker needs FLASHSALE_REDIS_URL, FLASHSALE_DATABASE_URL and FLASHSALE_KAFKA_BOOTSTRAP"
            )
        self.settings = settings
        self.options = options or WorkerOptions()
        self.worker_id = self.options.worker_id or _default_worker_id()
        self.batch_size = self.options.batch_size or settings.worker_batch_size
        self.lease_ms = self.options.lease_ms or settings.worker_lease_ms
        self.keyspace = settings.keyspace()
        self.topics = Topics(settings.topic_reservations, settings.topic_orders, settings.topic_inventory)
        self.stats = WorkerStats()
        self._owned: dict[int, asyncio.Task[None]] = {}
        self._leaving: set[int] = set()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._topics_ready = False
        self._publisher_lock = asyncio.Lock()
        self.started = threading.Event()
        self.gateway = gateway

    # -- public -------------------------------------------------------------------------------------------
    @property
    def owned_partitions(self) -> frozenset[int]:
        """Partitions this worker holds the lease of right now."""
        return frozenset(p for p in self._owned if p not in self._leaving)

    def stop(self) -> None:
        """Asks the worker to stop (safe from any thread or a signal handler); run() returns soon after."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    async def run(self) -> None:
        """Runs until stop(): holds leases, drains partitions, sweeps expiries. Releases everything after."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # One Redis or a cluster (FLASHSALE_REDIS_CLUSTER): every command below has one key, or keys of one
        # partition ({pN}: one slot), so a cluster client sends each to the node serving it.
        self.redis = async_redis_client(
            str(self.settings.redis_url), cluster=self.settings.redis_cluster, max_connections=64
        )
        self._partition_clients: dict[int, AsyncClient] = {}
        # On a cluster the leases too have a client of their own (see _redis_of).
        self._lease_client = self.redis
        if self.settings.redis_cluster:
            url = str(self.settings.redis_url)
            # A connection per partition and a few for the lease loop: on stop every drain task releases
            # its lease at once, and redis-py's asyncio cluster client fails a command at once (Too many
            # connections) past its per-node limit; a lost release leaves the lease held until it expires,
            # blocking a takeover and `reconcile --repair` right after a clean stop.
            pool = self.keyspace.partitions + 4
            self._lease_client = async_redis_client(url, cluster=True, max_connections=pool)
        self.leases = Leases(self._lease_client, self.keyspace, self.worker_id, self.lease_ms)
        if self.settings.redis_cluster:
            await self._learn_the_cluster()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            str(self.settings.database_url),
            min_size=1,
            max_size=self.options.postgres_pool_size,
            open=False,
            timeout=5.0,
            reconnect_timeout=0,  # keep trying to reconnect for as long as PostgreSQL is away
            kwargs={"connect_timeout": 5},
        )
        await self.pool.open(wait=False)
        self.publisher = Publisher(
            str(self.settings.kafka_bootstrap),
            self.topics,
            message_timeout_ms=self.options.message_timeout_ms,
        )
        self.engine = AsyncEngine.from_settings(self.settings)
        log.info(
            "event=worker_started worker=%s partitions=%d batch_size=%d lease_ms=%d sweep=%s trim=%s",
            self.worker_id, self.keyspace.partitions, self.batch_size, self.lease_ms,
            self.options.sweep, self.options.trim,
        )  # fmt: skip
        background = [asyncio.create_task(self._lease_loop(), name="leases")]
        if self.options.sweep:
            background.append(asyncio.create_task(self._sweep_loop(), name="sweeper"))
        if self.options.settle:
            background.append(asyncio.create_task(self._settle_loop(), name="settlement"))
        self.admitter = Admitter(self.engine, self.redis, self.keyspace, self.worker_id, self.lease_ms)
        if self.options.admit:
            background.append(asyncio.create_task(self._admit_loop(), name="admitter"))
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown(background)

    # -- leases -------------------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        assert self._stopping is not None
        interval = self.lease_ms / 3000
        last_lag_log = 0.0
        while not self._stopping.is_set():
            try:
                await self._rebalance()
                if time.monotonic() - last_lag_log > 10:
                    last_lag_log = time.monotonic()
                    # Bounded: a node that hangs must not hold the next renewal past the leases.
                    await asyncio.wait_for(self._log_lag(), self.lease_ms / 6000)
            except (redis.RedisError, OSError) as error:
                log.warning("event=lease_round_failed worker=%s error=%r", self.worker_id, str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _rebalance(self) -> None:
        held = set(self._owned)
        kept = await self.leases.renew(held)  # first: a heartbeat to a node that hangs must not delay it
        live = await self.leases.heartbeat(set(self.owned_partitions))
        for p in held - kept:
            log.warning("event=lease_lost worker=%s partition=%d", self.worker_id, p)
            self._leaving.add(p)
        share = self.leases.fair_share(live)
        active = sorted(self.owned_partitions)
        for p in active[share:]:
            # More than our share: hand the surplus over once its batch in flight is done.
            log.info(
                "event=partition_handover worker=%s partition=%d live_workers=%d", self.worker_id, p, live
            )
            self._leaving.add(p)
        for p in await self.leases.acquire(set(self._owned), share):
            log.info("event=partition_acquired worker=%s partition=%d", self.worker_id, p)
            self._owned[p] = asyncio.create_task(self._drain_partition(p), name=f"drain-{p}")

    async def _log_lag(self) -> None:
        lags = await read_lag_async(self.redis, self.keyspace)
        mine = [lag for lag in lags if lag.partition in self._owned]
        total = total_lag(mine)
        if total.pending:
            log.info(
                "event=lag worker=%s partitions=%d pending=%d oldest_age_ms=%d",
                self.worker_id, len(mine), total.pending, total.oldest_age_ms,
            )  # fmt: skip
        for node in nodes_down(lags):
            held_back = [lag.partition for lag in lags if lag.node == node]
            log.warning(
                "event=redis_node_down worker=%s node=%s partitions=%s",
                self.worker_id, node, ",".join(map(str, held_back)),
            )  # fmt: skip

    def _redis_of(self, partition: int) -> AsyncClient:
        """The client of a partition's drain. On a cluster each partition has one of its own: redis-py's
        asyncio cluster client closes every connection it has when a node answers CLUSTERDOWN (as a
        restarted master does until it has heard from the others), which would fail the batches of every
        partition at once; so a node's trouble reaches only its own partitions' drains."""
        if not self.settings.redis_cluster:
            return self.redis
        client = self._partition_clients.get(partition)
        if client is None:
            client = async_redis_client(str(self.settings.redis_url), cluster=True, max_connections=4)
            self._partition_clients[partition] = client
        return client

    async def _learn_the_cluster(self) -> None:
        """Every cluster client reads the slot map now, while the node FLASHSALE_REDIS_URL names answers;
        from then on each knows every node, so a partition taken over later still finds its master when
        that first node is down."""
        clients = [
            self.redis,
            self._lease_client,
            *(self._redis_of(p) for p in range(self.keyspace.partitions)),
        ]
        try:
            await asyncio.gather(*(client.initialize() for client in clients))  # type: ignore[union-attr]
        except BaseException:
            for client in clients:
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.aclose()
            raise

    def _holds(self, partition: int) -> bool:
        assert self._stopping is not None
        return not self._stopping.is_set() and partition in self._owned and partition not in self._leaving

    # -- draining -----------------------------------------------------------------------------------------
    async def _drain_partition(self, p: int) -> None:
        try:
            while self._holds(p):
                try:
                    await self._drain_until_stalled(p)
                except PermanentSinkError as error:
                    await self._stall(p, error)
        except _Abandon:
            log.info("event=batch_abandoned worker=%s partition=%d", self.worker_id, p)
        except (redis.RedisError, OSError) as error:
            # Redis (on a cluster: this partition's node) is away: give the partition up; the lease loop
            # takes it again when the node is back. The other partitions' tasks go on.
            log.error("event=partition_failed worker=%s partition=%d error=%r", self.worker_id, p, str(error))
            await asyncio.sleep(1)
        except Exception:
            log.exception("event=partition_crashed worker=%s partition=%d", self.worker_id, p)
            await asyncio.sleep(1)
        finally:
            self._owned.pop(p, None)
            self._leaving.discard(p)
            with contextlib.suppress(redis.RedisError, OSError):
                await self.leases.release(p)
            log.info("event=partition_released worker=%s partition=%d", self.worker_id, p)

    async def _drain_until_stalled(self, p: int) -> None:
        """Drains the partition's stream while the lease is ours; PermanentSinkError when it must stop."""
        partition = self.keyspace.partition(p)
        stream = partition.events()
        earlier = await stalls.read(self._redis_of(p), partition)
        if earlier is not None:  # stopped before (by this worker or one that died): wait for the operator
            await self._wait_until_resumed(p, earlier)
            return
        applied = await self._retry("postgres", p, lambda: self._read_applied(p))
        published = str(await self._redis_of(p).hget(partition.writeback_progress(), "published") or "0-0")
        await self._check_no_events_lost(p, applied)
        log.info(
            "event=partition_resumed worker=%s partition=%d applied=%s published=%s",
            self.worker_id, p, applied, published,
        )  # fmt: skip
        while self._holds(p):
            cursor = min(applied, published, key=stream_id_key)
            start = "-" if cursor == "0-0" else f"({cursor}"
            entries: Any = await self._redis_of(p).xrange(stream, start, "+", count=self.batch_size)
            if not entries:
                await self._idle()
                continue
            events, unreadable = _parse(p, entries)
            if events:
                applied = await self._to_postgres(p, events, applied)
                published = await self._to_kafka(p, events, published)
                self.stats.batches += 1
                await self._record(p, applied, published)
            if unreadable is not None:
                raise unreadable

    async def _check_no_events_lost(self, p: int, applied: str) -> None:
        """The stream must still hold the event at PostgreSQL's applied offset (the trim keeps it): else
        Redis lost events PostgreSQL already has, whatever ids newer events have taken since."""
        if applied == "0-0":
            return
        partition = self.keyspace.partition(p)
        stream = partition.events()
        if await self._redis_of(p).xrange(stream, applied, applied):
            return
        try:
            last = str((await self._redis_of(p).xinfo_stream(stream)).get("last-generated-id") or "0-0")
        except redis.ResponseError:
            last = "0-0"  # no stream at all
        if last == applied:
            return  # trimmed to the offset by a worker of a release that did not keep it, nothing since
        if await self._redis_of(p).hget(partition.writeback_progress(), "rebuilt_after") == applied:
            return  # flashsale reconcile rebuilt Redis to continue after this offset
        raise PermanentSinkError(
            "redis",
            applied,
            f"the stream no longer holds the event at PostgreSQL's applied offset (its last id is {last}): "
            "Redis lost events PostgreSQL has (restarted without AOF, or restored from an older copy). "
            "Stop the stack, run `flashsale reconcile --repair redis-from-postgres`, then "
            f"`flashsale worker resume {p}`",
        )

    async def _stall(self, p: int, error: PermanentSinkError) -> None:
        """Stops the partition loudly and keeps its lease until an operator resumes it."""
        partition = self.keyspace.partition(p)
        await stalls.mark(self._redis_of(p), partition, error)
        self.stats.stalls += 1
        log.error(
            "event=partition_stalled worker=%s partition=%d sink=%s stream_id=%s error=%r hint=%r",
            self.worker_id, p, error.sink, error.event_id, error.error[:500],
            f"fix the cause, then `flashsale worker resume {p}` (README: What can be lost)",
        )  # fmt: skip
        stall = await stalls.read(self._redis_of(p), partition)
        if stall is not None:
            await self._wait_until_resumed(p, stall)

    async def _wait_until_resumed(self, p: int, stall: stalls.Stall) -> None:
        partition = self.keyspace.partition(p)
        while self._holds(p):
            if await stalls.read(self._redis_of(p), partition) is None:
                log.info(
                    "event=partition_unstalled worker=%s partition=%d stream_id=%s",
                    self.worker_id, p, stall.event_id,
                )  # fmt: skip
                return
            await self._idle(seconds=1.0)

    async def _idle(self, seconds: float | None = None) -> None:
        assert self._stopping is not None
        wait = self.options.idle_poll_ms / 1000 if seconds is None else seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)

    async def _read_applied(self, p: int) -> str:
        async with self.pool.connection() as conn:
            return await ensure_offset(conn, p)

    async def _to_postgres(self, p: int, events: list[Event], applied: str) -> str:
        """Applies the events after ``applied``; on an error no retry cures, applies every event before the
        one PostgreSQL refuses (halving the run) and raises PermanentSinkError at that one."""
        pending = unapplied(events, applied)
        if not pending:
            return applied
        try:
            return await self._apply(p, pending, applied)
        except PermanentSinkError:
            raise
        except Exception as error:
            if not is_permanent(error):
                raise
            if len(pending) == 1:
                raise PermanentSinkError("postgres", pending[0].stream_id, error) from error
        half = len(pending) // 2
        applied = await self._to_postgres(p, pending[:half], applied)
        return await self._to_postgres(p, pending[half:], applied)

    async def _apply(self, p: int, pending: list[Event], applied: str) -> str:
        state = _PostgresAttempt(applied, pending)

        async def attempt() -> str:
            async with self.pool.connection() as conn:
                if state.failed:
                    # After a failure, PostgreSQL's own offset decides what is left to apply.
                    stored = await ensure_offset(conn, p)
                    if stream_id_key(stored) > stream_id_key(state.applied):
                        state.applied, state.pending = stored, unapplied(state.pending, stored)
                    if not state.pending:
                        return state.applied
                try:
                    return await apply_batch(conn, Batch.fold(p, state.pending), state.applied)
                except BaseException:
                    state.failed = True
                    raise

        new_applied = await self._retry("postgres", p, attempt)
        self.stats.applied_events += len(unapplied(pending, applied))
        return new_applied

    async def _to_kafka(self, p: int, events: list[Event], published: str) -> str:
        pending = unapplied(events, published)
        if not pending:
            return published

        async def attempt() -> int:
            await self._ensure_publisher()
            return await self.publisher.publish(pending)

        try:
            sent = await self._retry("kafka", p, attempt)
        except PublishFailed as error:
            if not error.permanent:
                raise
            raise PermanentSinkError("kafka", error.first_failed or pending[0].stream_id, error) from error
        self.stats.published_messages += sent
        self.stats.published_events += len(pending)
        return pending[-1].stream_id

    def _new_publisher(self) -> Publisher:
        bootstrap, timeout = str(self.settings.kafka_bootstrap), self.options.message_timeout_ms
        return Publisher(bootstrap, self.topics, message_timeout_ms=timeout)

    async def _ensure_publisher(self) -> None:
        async with self._publisher_lock:
            if self.publisher.broken:
                # Other partitions' sends on the old producer fail with it and are published again.
                log.warning("event=kafka_producer_replaced worker=%s", self.worker_id)
                old, self.publisher = self.publisher, self._new_publisher()
                await asyncio.to_thread(old.close, 1.0)
            if self.options.create_topics and not self._topics_ready:
                s = self.settings
                wanted = [
                    (s.topic_reservations, s.topic_reservations_partitions),
                    (s.topic_inventory, s.topic_inventory_partitions),
                    (s.topic_orders, s.topic_orders_partitions),
                ]
                await asyncio.to_thread(
                    ensure_topics, str(s.kafka_bootstrap), wanted, replication=self.options.topic_replication
                )
                self._topics_ready = True

    async def _record(self, p: int, applied: str, published: str) -> None:
        partition = self.keyspace.partition(p)
        pipe = self._redis_of(p).pipeline(transaction=False)
        pipe.hset(
            partition.writeback_progress(),
            mapping={
                "applied": applied,
                "published": published,
                "owner": self.worker_id,
                "updated_at": int(time.time() * 1000),
            },
        )
        if self.options.trim:
            # Below what both sinks took, keeping the entry at the floor itself: a takeover checks that the
            # event at PostgreSQL's offset is still there (writeback.stalls: lost events).
            floor = min(applied, published, key=stream_id_key)
            pipe.xtrim(partition.events(), minid=floor, approximate=False)
        await pipe.execute()

    async def _retry(self, sink: str, p: int, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` until it succeeds, backing off while the sink is down; gives up (_Abandon) when
        the worker stops or loses the partition."""
        failures = 0

        def give_up(state: RetryCallState) -> bool:
            return not self._holds(p)

        def before_sleep(state: RetryCallState) -> None:
            nonlocal failures
            failures += 1
            self.stats.sink_failures[sink] += 1
            error = state.outcome.exception() if state.outcome else None
            level = logging.WARNING if failures < 5 else logging.ERROR
            log.log(
                level,
                "event=sink_unavailable sink=%s worker=%s partition=%d attempt=%d retry_in_s=%.2f error=%r",
                sink, self.worker_id, p, state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0, str(error)[:300],
            )  # fmt: skip

        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.05, max=self.options.retry_max_s, jitter=0.05),
            stop=give_up,
            retry=retry_if_exception(lambda error: not is_permanent(error)),
            before_sleep=before_sleep,
            reraise=True,
        )

        async def call() -> T:
            # tenacity treats a lambda returning a coroutine as sync: await it here explicitly.
            return await attempt()

        try:
            result: T = await retrying(call)
        except Exception as error:
            if not self._holds(p):
                raise _Abandon from error
            raise
        if failures:
            log.info(
                "event=sink_recovered sink=%s worker=%s partition=%d failed_attempts=%d",
                sink, self.worker_id, p, failures,
            )  # fmt: skip
        return result

    # -- expiry sweeper -----------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        assert self._stopping is not None
        interval = self.settings.sweep_interval_ms / 1000
        while not self._stopping.is_set():
            for p in sorted(self.owned_partitions):
                try:  # per partition, bounded: a node that is down or hangs holds back only its own
                    while True:
                        expire = self.engine.expire(p, self.settings.sweep_batch)
                        ended = await asyncio.wait_for(expire, _SWEEP_TIMEOUT_S)
                        self.stats.expired += ended
                        if ended < self.settings.sweep_batch:
                            break
                    # Stock-bucket transfers a crash cut between their steps (engine/buckets.py).
                    finish = self.engine.finish_transfers(p)
                    finished = await asyncio.wait_for(finish, _SWEEP_TIMEOUT_S)
                    if finished:
                        self.stats.transfers_finished += finished
                        log.warning(
                            "event=transfers_finished worker=%s partition=%d transfers=%d",
                            self.worker_id,
                            p,
                            finished,
                        )
                except (redis.RedisError, OSError, FlashSaleError) as error:  # OSError: TimeoutError too
                    log.warning(
                        "event=sweep_failed worker=%s partition=%d error=%r", self.worker_id, p, repr(error)
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    # -- payment settlement -------------------------------------------------------------------------------
    async def _settle_loop(self) -> None:
        assert self._stopping is not None
        gateway = self.gateway or SimulatedGateway(self.redis, self.keyspace)
        settlement = Settlement(self.engine, gateway)
        interval = self.options.settle_interval_ms / 1000
        while not self._stopping.is_set():
            for p in sorted(self.owned_partitions):
                try:
                    self.stats.settled += len(await settlement.settle_partition(p))
                except (redis.RedisError, OSError, GatewayError) as error:
                    log.warning(
                        "event=settle_failed worker=%s partition=%d error=%r", self.worker_id, p, str(error)
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    # -- waiting rooms' admitter ---------------------------------------------------------------------------
    async def _admit_loop(self) -> None:
        assert self._stopping is not None
        interval = self.options.admit_interval_ms / 1000
        discovered = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - discovered > 1.0:
                    await self.admitter.discover()
                    discovered = time.monotonic()
                await self.admitter.step()
                self.stats.admitted = self.admitter.stats.admitted
            except (redis.RedisError, OSError) as error:
                log.warning("event=admit_failed worker=%s error=%r", self.worker_id, str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    # -- stopping -----------------------------------------------------------------------------------------
    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        log.info("event=worker_stopping worker=%s partitions=%d", self.worker_id, len(self._owned))
        drains = list(self._owned.values())
        # Drain tasks finish the batch in flight (a sink that is down makes them abandon it instead).
        _done, late = await asyncio.wait(drains + background, timeout=self.options.stop_timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for p in list(self._owned):
            with contextlib.suppress(redis.RedisError, OSError):
                await self.leases.release(p)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.admitter.release_all()
        with contextlib.suppress(redis.RedisError, OSError):
            await self.leases.leave()
        await asyncio.to_thread(self.publisher.close, 5.0)
        await self.pool.close()
        await self.engine.close()
        for client in [*self._partition_clients.values(), self._lease_client]:
            if client is not self.redis:
                with contextlib.suppress(redis.RedisError, OSError):
                    await client.aclose()
        await self.redis.aclose()
        log.info(
            "event=worker_stopped worker=%s applied_events=%d published_events=%d batches=%d",
            self.worker_id, self.stats.applied_events, self.stats.published_events, self.stats.batches,
        )  # fmt: skip


def run_until_signalled(settings: Settings, options: WorkerOptions | None = None) -> None:
    """Runs a worker in this process until SIGTERM or SIGINT (the `flashsale worker` command)."""
    worker = Worker(settings, options)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        await worker.run()

    asyncio.run(main())


class WorkerThread:
    """A worker on a background thread with its own event loop, for sync callers (tests, bench, `up`)."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None) -> None:
        self.settings = settings
        self.worker = Worker(settings, options)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> WorkerThread:
        def target() -> None:
            try:
                asyncio.run(self.worker.run())
            except BaseException as error:  # surfaced by stop()
                self._error = error
                self.worker.started.set()

        self._thread = threading.Thread(target=target, name=f"worker-{self.worker.worker_id}", daemon=True)
        self._thread.start()
        self.worker.started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.worker.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._error is not None:
            raise self._error

    def wait_drained(self, timeout_s: float = 60.0, poll_s: float = 0.05) -> bool:
        """Waits until no partition has pending events; False on timeout."""
        return wait_drained(self.settings, timeout_s=timeout_s, poll_s=poll_s)

    @property
    def owned_partitions(self) -> frozenset[int]:
        return self.worker.owned_partitions

    @property
    def stats(self) -> WorkerStats:
        return self.worker.stats

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def wait_drained(settings: Settings, *, timeout_s: float = 60.0, poll_s: float = 0.05) -> bool:
    """Waits until every partition's stream is fully in PostgreSQL and Kafka (by the workers' records);
    a partition whose Redis node does not answer is not drained."""
    client = redis_client(str(settings.redis_url), cluster=settings.redis_cluster, max_connections=4)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            lags = read_lag(client, settings.keyspace())
            if total_lag(lags).pending == 0 and not nodes_down(lags):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
    finally:
        client.close()


def worker_command(options: WorkerOptions | None = None) -> list[str]:
    """The command line of a worker subprocess (``python -m flashsale.writeback``) with these options."""
    o = options or WorkerOptions()
    args = [sys.executable, "-m", "flashsale.writeback"]
    if o.worker_id:
        args += ["--worker-id", o.worker_id]
    if not o.sweep:
        args.append("--no-sweep")
    if not o.settle:
        args.append("--no-settle")
    if not o.admit:
        args.append("--no-admit")
    if not o.trim:
        args.append("--no-trim")
    if o.batch_size:
        args += ["--batch-size", str(o.batch_size)]
    if o.lease_ms:
        args += ["--lease-ms", str(o.lease_ms)]
    return args


def spawn_worker(
    settings: Settings, options: WorkerOptions | None = None, *, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Starts a worker as a subprocess (environment from ``settings``, log to ``log_path``); returns it."""
    env = {**os.environ, **settings.as_env()}
    if log_path is None:
        return subprocess.Popen(
            worker_command(options), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(worker_command(options), env=env, stdout=log_file, stderr=subprocess.STDOUT)


__all__ = [
    "Worker",
    "WorkerOptions",
    "WorkerStats",
    "WorkerThread",
    "run_until_signalled",
    "spawn_worker",
    "wait_drained",
    "worker_command",
]
