"""The engine's two clients, sync (threads) and asyncio, with the same operations and semantics.

Every state change is one EVALSHA of a script in ``lua/`` (built by ``engine.operations``); reads are
plain HGETALL/XRANGE. The asyncio client auto-pipelines (``engine.pipelining``). Neither client lets
redis-py retry a command on a connection error: a script must never run twice because a reply was lost;
callers retry with an idempotency key instead.

Both run on one Redis (the default) or on a Redis Cluster (``cluster=True``, FLASHSALE_REDIS_CLUSTER=1):
the sync client through redis-py's ``RedisCluster``, the asyncio one through ``engine.cluster`` (its
auto-pipeline, once per node). ``from_settings`` builds whichever the settings name.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import msgspec
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from . import buckets as stock_buckets
from .buckets import Plan
from .cluster import ClusterRouter
from .coalescing import ReserveCoalescer
from .errors import FlashSaleError, InvalidArgument, InvalidState, NotFound, NotReplicated, from_reply
from .events import Event, parse_entry
from .keys import Partition, bought_field, check_layout, held_field, home_bucket
from .models import (
    SALE_AND_ROOM_FIELDS,
    AdmitStep,
    Order,
    QueueFigures,
    QueueStanding,
    Reservation,
    Sale,
    SaleSettings,
    UserCounts,
    WaitingRoom,
    from_hash,
    queue_figures_from,
    reservation_from_record,
    sale_from_values,
)
from .operations import (
    MAX_KEY_ROUNDS,
    NEEDS_KEYS,
    Call,
    Operations,
    RateLimit,
    identifier,
    needed_keys,
    remember,
)
from .pipelining import AutoPipeline, release_when_replicated
from .scripts import Script, load_scripts
from .settings import SEVERAL_NODES_NEED_A_CLUSTER, EngineConfig, Settings

T = TypeVar("T")


def _raise_engine_error(error: ResponseError) -> FlashSaleError | ResponseError:
    return from_reply(str(error)) or error


def _still_asking(call: Call[Any]) -> ResponseError:
    return ResponseError(f"{call.script}: the script still asked for keys after {MAX_KEY_ROUNDS} sends")


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = aioredis.Redis | aiocluster.RedisCluster


def cluster_startup_nodes(url: str, *, cluster: bool) -> tuple[str, list[tuple[str, int]]]:
    """FLASHSALE_REDIS_URL split: the first URL, and the (host, port) of the other nodes it names. On a
    Redis Cluster the URL may name several nodes, comma-separated (``redis://:pw@10.0.0.1:7000,
    redis://10.0.0.2:7000``: credentials and options come from the first), so that a process starting
    while one of them is down still finds the cluster through another; one Redis takes one URL."""
    first, *others = (part.strip() for part in url.split(","))
    if not others:
        return first, []
    if not cluster:
        raise ValueError(SEVERAL_NODES_NEED_A_CLUSTER)
    nodes = []
    for part in (first, *others):
        options = parse_url(part if "://" in part else f"redis://{part}")
        host, port = options.get("host"), options.get("port")
        if not host or not port:
            raise ValueError(f"FLASHSALE_REDIS_URL: {part!r} is not a node's redis://host:port")
        nodes.append((str(host), int(port)))
    return first, nodes[1:]


def redis_client(
    url: str, *, cluster: bool = False, max_connections: int = 64, pool_timeout: float = 10.0
) -> SyncClient:
    """A sync redis-py client as the engine wants it: decoded replies, a blocking pool (per node on a
    cluster), and no retry of a command after a connection error. For the engine and for other layers
    that read the engine's keys (a cluster client routes each key to its node). On a cluster ``url`` may
    name several startup nodes (``cluster_startup_nodes``)."""
    url, others = cluster_startup_nodes(url, cluster=cluster)
    if cluster:
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in others]  # type: ignore[no-untyped-call]
        return redis.cluster.RedisCluster.from_url(
            url,
            startup_nodes=nodes,
            decode_responses=True,
            retry=_no_retry(),
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=max_connections,
            timeout=pool_timeout,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=True,
        retry=_no_retry(),
    )
    return redis.Redis(connection_pool=pool)


def async_redis_client(
    url: str, *, cluster: bool = False, max_connections: int = 32, pool_timeout: float = 10.0
) -> AsyncClient:
    """The asyncio twin of ``redis_client``. redis-py's asyncio cluster client has no waiting pool: past
    ``max_connections`` per node a command fails at once (the engine's own calls never use it)."""
    url, others = cluster_startup_nodes(url, cluster=cluster)
    if cluster:
        return aiocluster.RedisCluster.from_url(
            url,
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in others],
            decode_responses=True,
            retry=AsyncRetry(NoBackoff(), 0),
            max_connections=max_connections,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=True,
        retry=_no_retry(),
    )
    return aioredis.Redis(connection_pool=pool)


def _url_of(settings: Settings) -> str:
    if not settings.redis_url:
        raise ValueError("no Redis to connect to: set FLASHSALE_REDIS_URL")
    return settings.redis_url


# A waiting room's line and admissions live in one partition; a bucketed SKU's shoppers reserve in theirs.
_NO_ROOM_WITH_BUCKETS = "a waiting room is not supported on a sale split into stock buckets"


class _Common:
    """What both clients share: configuration, key layout, scripts, and decoding of reads."""

    def __init__(self, config: EngineConfig | None) -> None:
        self.config = config or EngineConfig()
        self.ops = Operations(self.config)
        self.keys = self.ops.keys
        self.scripts: dict[str, Script] = load_scripts()
        # SKU -> its stock bucket count (engine/buckets.py), learnt once per SKU: fixed for a sale's life.
        self._buckets: dict[str, int] = {}

    def _learnt_buckets(self, sku: str, values: list[Any]) -> int:
        """The bucket count from bucket 0's (available, buckets); remembered only when the sale exists."""
        count = int(values[1] or 1)
        if values[0] is not None:
            remember(self._buckets, sku, count)
        return count

    def _bucket_sku_keys(self, sku: str, buckets: int) -> list[str]:
        return [self.keys.for_bucket(sku, b).sku(sku) for b in range(1, buckets)]

    @staticmethod
    def _summed(sale: Sale, others: list[list[Any]]) -> Sale:
        """A bucketed sale as one: bucket 0's settings and total, the counters summed over the buckets, and
        the units between two buckets (``moving``)."""
        available, reserved, sold = sale.available, sale.reserved, sale.sold
        for row in others:
            available += int(row[0] or 0)
            reserved += int(row[1] or 0)
            sold += int(row[2] or 0)
        moving = sale.total - available - reserved - sold
        return msgspec.structs.replace(sale, available=available, reserved=reserved, sold=sold, moving=moving)

    def _parse(self, call: Call[T], reply: Any) -> T:
        if isinstance(reply, ResponseError):
            raise _raise_engine_error(reply)
        return call.parse(reply)

    def _reservation_keys(self, reservation_id: str) -> tuple[str, str]:
        """Where a reservation's record is: a field of the open hash while open, else a key of its own."""
        p = self.keys.for_reservation(reservation_id)
        return p.open_holds(), p.reservation(reservation_id)

    def _order_key(self, order_id: str) -> str:
        return self.keys.for_order(order_id).order(order_id)

    def _sku_key(self, sku: str) -> str:
        return self.keys.for_sku(identifier(sku, "sku")).sku(sku)

    @staticmethod
    def _entity(fields: Mapping[Any, Any], into: type[T], what: str) -> T:
        if not fields:
            raise NotFound(f"no {what}")
        return from_hash(fields, into)

    @staticmethod
    def _sale(values: list[Any], sku: str) -> Sale:
        sale = sale_from_values(values)
        if sale is None:
            raise NotFound(f"no sale for sku {sku!r}")
        return sale

    @staticmethod
    def _reservation(record: Any, reservation_id: str) -> Reservation:
        if record is None:
            raise NotFound(f"no reservation {reservation_id!r}")
        return reservation_from_record(reservation_id, str(record))

    @staticmethod
    def _counts(values: list[Any]) -> UserCounts:
        return UserCounts(held=int(values[0] or 0), purchased=int(values[1] or 0))

    @staticmethod
    def _catalog(members_per_partition: list[Any]) -> list[str]:
        # A bucketed SKU is in the catalog of each of its buckets' partitions: listed once.
        return sorted({str(sku) for members in members_per_partition for sku in members})

    def _queue_reads(self, sku: str, now: int, pipe: Any) -> None:
        """A waiting room's figures, asked on a pipeline: line, unused and used live admissions, state."""
        p = self.keys.for_sku(identifier(sku, "sku"))
        pipe.zcard(p.queue(sku))
        pipe.zcount(p.admitted(sku), f"({now}", "+inf")
        pipe.zcount(p.admitted(sku), "-inf", f"({-now}")
        pipe.hgetall(p.waiting_room(sku))

    @staticmethod
    def _figures(sku: str, now: int, replies: list[Any]) -> QueueFigures:
        line, unused, used, room = replies
        return queue_figures_from(sku, now, int(line), int(unused) + int(used), room)

    @staticmethod
    def _events(partition: Partition, entries: Any) -> list[Event]:
        return [parse_entry(partition.index, stream_id, fields) for stream_id, fields in entries or ()]


class Engine(_Common):
    """The sync client, safe to share between threads (its connection pool waits when exhausted)."""

    def __init__(
        self, client: SyncClient, config: EngineConfig | None = None, *, redirect_timeout: float = 10.0
    ) -> None:
        super().__init__(config)
        self.redis = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self.redirect_timeout = redirect_timeout

    @classmethod
    def from_url(
        cls,
        url: str,
        config: EngineConfig | None = None,
        *,
        max_connections: int = 64,
        pool_timeout: float = 10.0,
        cluster: bool = False,
    ) -> Engine:
        """On one Redis, or (``cluster=True``) on the Redis Cluster that ``url`` is a node of; on a cluster
        the pool limits hold per node."""
        client = redis_client(
            url, cluster=cluster, max_connections=max_connections, pool_timeout=pool_timeout
        )
        return cls(client, config, redirect_timeout=pool_timeout)

    @classmethod
    def from_settings(cls, settings: Settings, *, max_connections: int | None = None) -> Engine:
        """The client the settings name: FLASHSALE_REDIS_URL, FLASHSALE_REDIS_CLUSTER, the pool's size."""
        return cls.from_url(
            _url_of(settings),
            settings.engine_config(),
            max_connections=max_connections or settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout_s,
            cluster=settings.redis_cluster,
        )

    def load_scripts(self) -> None:
        """Loads the scripts (on a cluster: on every master) and checks the keyspace's partition count
        (``check_layout``): what every process does once before its first call."""
        for script in self.scripts.values():
            self.redis.script_load(script.source)
        self.check_layout()

    def check_layout(self) -> None:
        """Records this process's partition count on first use; PartitionCountMismatch on another."""
        key = self.keys.layout()
        self.redis.hsetnx(key, "partitions", self.config.partitions)
        check_layout(self.redis.hget(key, "partitions"), self.config.partitions, key)

    def _run(self, call: Call[T]) -> T:
        sha = self.scripts[call.script].sha
        evalsha: Callable[..., Any]
        if self.config.wait is not None:
            evalsha = self._evalsha_waited
        else:
            evalsha = self._evalsha_on_cluster if self.cluster else self.redis.evalsha
        for _ in range(MAX_KEY_ROUNDS):
            try:
                try:
                    reply = evalsha(sha, len(call.keys), *call.keys, *call.args)
                except NoScriptError:
                    self.load_scripts()
                    reply = evalsha(sha, len(call.keys), *call.keys, *call.args)
            except ResponseError as error:
                # A refusal (most calls of a sold-out sale), raised without a local holding it: no cycle.
                message = str(error)
                if not message.startswith(NEEDS_KEYS):
                    raise (from_reply(message) or error) from None
                call = call.with_keys(needed_keys(message))  # nothing ran: send it again with them
                continue
            return call.parse(reply)
        raise _still_asking(call)

    def _evalsha_on_cluster(self, sha: str, count: int, *keys_and_args: str | int) -> Any:
        """redis-py follows MOVED and ASK, and gives TRYAGAIN (a migrating slot whose keys are split, which
        every call that creates a key meets until the migration ends) 16 tries, about half a second.
        Answers that say the script did not run are waited out here, up to the pool timeout."""
        deadline = time.monotonic() + self.redirect_timeout
        pause = 0.002
        while True:
            try:
                return self.redis.evalsha(sha, count, *keys_and_args)
            except (TryAgainError, ClusterDownError, ClusterError) as error:
                # Of the plain ClusterErrors only "TTL exhausted." (redirections ran out) says nothing ran.
                plain = isinstance(error, ClusterError) and not isinstance(error, ClusterDownError)
                if plain and str(error) != "TTL exhausted.":
                    raise
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.1)

    def _evalsha_waited(self, sha: str, count: int, *keys_and_args: str | int) -> Any:
        """WAIT mode: the call, then ``WAIT n timeout`` on the same connection (one pipeline); its reply
        only once n replicas have its change, else NotReplicated. On a cluster the pipeline goes to the node
        serving the call's slot, whose plain client follows no redirection: MOVED, ASK, TRYAGAIN and
        CLUSTERDOWN are followed here as redis-py would (none of them means the script ran)."""
        wait = self.config.wait
        assert wait is not None
        deadline = time.monotonic() + self.redirect_timeout
        pause, asking, redirects = 0.002, None, 0
        while True:
            if isinstance(self.redis, redis.cluster.RedisCluster):
                node = asking or self.redis.get_node_from_key(str(keys_and_args[0]))  # type: ignore[no-untyped-call]
                pipe = node.redis_connection.pipeline(transaction=False)
                if asking is not None:
                    pipe.execute_command("ASKING")
            else:
                pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(sha, count, *keys_and_args)
            pipe.execute_command("WAIT", *wait)
            replies = pipe.execute(raise_on_error=False)[1 if asking is not None else 0 :]
            reply, asking = replies[0], None
            if isinstance(reply, NoScriptError):
                self.load_scripts()
                continue
            if isinstance(reply, (MovedError, AskError)) and isinstance(
                self.redis, redis.cluster.RedisCluster
            ):
                redirects += 1
                if redirects > 16:
                    raise ClusterError("TTL exhausted.")
                if not isinstance(reply, MovedError):  # redis-py's MovedError is an AskError too
                    asking = self.redis.get_node(reply.host, reply.port)  # type: ignore[no-untyped-call]
                if asking is None:
                    self.redis.nodes_manager.initialize()
                continue
            if isinstance(reply, (TryAgainError, ClusterDownError)) and self.cluster:
                if time.monotonic() + pause > deadline:
                    raise reply
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.1)
                continue
            if isinstance(reply, ResponseError):
                raise reply
            released = release_when_replicated(replies, [True], wait)[0]
            if isinstance(released, NotReplicated):
                raise released
            return released

    def _drive(self, plan: Plan[T]) -> T:
        """Runs a plan of several script calls (engine/buckets.py), one call at a time."""
        outcome: Any = None
        try:
            while True:
                step = plan.send(outcome)
                outcome = [self._outcome(c) for c in step] if isinstance(step, list) else self._outcome(step)
        except StopIteration as done:
            return cast(T, done.value)

    def _outcome(self, call: Call[Any]) -> Any:
        try:
            return self._run(call)
        except FlashSaleError as error:
            return error

    def buckets_of(self, sku: str) -> int:
        """The SKU's stock bucket count (1 when it has no sale yet)."""
        known = self._buckets.get(sku)
        if known is None:
            known = self._learnt_buckets(sku, self.redis.hmget(self._sku_key(sku), ("available", "buckets")))
        return known

    # -- state changes: one script each -------------------------------------------------------------------
    def load_sale(self, settings: SaleSettings, *, buckets: int | None = None) -> Sale:
        """Creates or changes a sale; ``buckets`` > 1 splits a new sale's stock (engine/buckets.py). A sale's
        bucket count is fixed once it exists (None: keep it)."""
        count = buckets or self.buckets_of(settings.sku)
        if not 1 <= count <= self.config.partitions:
            raise InvalidArgument(f"buckets must be 1..{self.config.partitions} (one partition each)")
        if count == 1:
            return self._run(self.ops.load_sale(settings))
        self._drive(stock_buckets.load_sale(self.ops, settings, count))
        return self.get_sale(settings.sku)

    def reserve(
        self,
        sku: str,
        user: str,
        quantity: int = 1,
        *,
        idempotency_key: str | None = None,
        rate: RateLimit | None = None,
    ) -> Reservation:
        count = self._buckets.get(sku) or self.buckets_of(sku)
        if count == 1:
            return self._run(self.ops.reserve(sku, user, quantity, idempotency_key, rate))
        return self._drive(stock_buckets.reserve(self.ops, sku, user, quantity, idempotency_key, rate, count))

    def set_waiting_room(self, sku: str, room: WaitingRoom) -> Sale:
        if room.on and self.buckets_of(sku) > 1:
            raise InvalidState(_NO_ROOM_WITH_BUCKETS)
        return self._run(self.ops.set_waiting_room(sku, room))

    def join_queue(self, sku: str, user: str, *, rate: RateLimit | None = None) -> QueueStanding:
        return self._run(self.ops.queue_join(sku, user, rate))

    def queue_status(self, sku: str, user: str, *, rate: RateLimit | None = None) -> QueueStanding:
        return self._run(self.ops.queue_status(sku, user, rate))

    def admit(self, sku: str, worker_id: str, batch: int = 1000) -> AdmitStep:
        return self._run(self.ops.queue_admit(sku, worker_id, batch))

    def begin_checkout(
        self, reservation_id: str, user: str, payment_method: str, *, idempotency_key: str | None = None
    ) -> Order:
        return self._run(self.ops.begin_checkout(reservation_id, user, payment_method, idempotency_key))

    def confirm(
        self, order_id: str, user: str, transaction_id: str = "", *, idempotency_key: str | None = None
    ) -> Order:
        return self._run(self.ops.confirm(order_id, user, transaction_id, idempotency_key))

    def fail_checkout(self, order_id: str, user: str, reason: str = "PAYMENT_DECLINED") -> Order:
        return self._run(self.ops.fail_checkout(order_id, user, reason))

    def release(self, reservation_id: str, user: str) -> Reservation:
        return self._run(self.ops.release(reservation_id, user))

    def expire(self, partition: int, limit: int = 500) -> int:
        return self._run(self.ops.expire(partition, limit))

    def expire_all(self, limit: int = 500) -> int:
        return sum(self.expire(p, limit) for p in range(self.config.partitions))

    def cancel_order(self, order_id: str, user: str, *, admin: bool = False) -> Order:
        return self._run(self.ops.cancel_order(order_id, user, admin))

    def fulfil_order(self, order_id: str) -> Order:
        return self._run(self.ops.fulfil_order(order_id))

    def restock(self, sku: str, delta: int) -> Sale:
        count = self.buckets_of(sku)
        if count == 1:
            return self._run(self.ops.restock(sku, delta))
        self._drive(stock_buckets.restock(self.ops, sku, delta, count))
        return self.get_sale(sku)

    def finish_transfers(self, partition: int, grace_ms: int = stock_buckets.TRANSFER_GRACE_MS) -> int:
        """The sweeper's step for stock-bucket transfers of one partition (engine/buckets.py)."""
        return self._drive(stock_buckets.finish_transfers(self.ops, partition, grace_ms))

    def noop(self, sku: str) -> int:
        return self._run(self.ops.noop(sku))

    # -- reads --------------------------------------------------------------------------------------------
    def get_sale(self, sku: str) -> Sale:
        sale = self._sale(self.redis.hmget(self._sku_key(sku), SALE_AND_ROOM_FIELDS), sku)
        if sale.buckets == 1:
            return sale
        pipe = self.redis.pipeline(transaction=False)
        for key in self._bucket_sku_keys(sku, sale.buckets):
            pipe.hmget(key, ("available", "reserved", "sold"))
        return self._summed(sale, pipe.execute())

    def bucket_sales(self, sku: str) -> list[Sale]:
        """Each stock bucket of a SKU as a sale of its own (its counters), bucket 0 first."""
        first = self._sale(self.redis.hmget(self._sku_key(sku), SALE_AND_ROOM_FIELDS), sku)
        pipe = self.redis.pipeline(transaction=False)
        for key in self._bucket_sku_keys(sku, first.buckets):
            pipe.hmget(key, SALE_AND_ROOM_FIELDS)
        return [first, *(self._sale(values, sku) for values in pipe.execute())]

    def list_sales(self) -> list[Sale]:
        """Every SKU's sale, sorted by SKU: two pipelined round trips (catalogs, then sales); on a cluster
        redis-py's pipeline sends each node its share at once."""
        catalogs = self.redis.pipeline(transaction=False)
        for p in self.keys.all():
            catalogs.smembers(p.catalog())
        pipe = self.redis.pipeline(transaction=False)
        for sku in self._catalog(catalogs.execute()):
            pipe.hmget(self.keys.for_sku(sku).sku(sku), SALE_AND_ROOM_FIELDS)
        sales = [sale for values in pipe.execute() if (sale := sale_from_values(values)) is not None]
        return [self.get_sale(sale.sku) if sale.buckets > 1 else sale for sale in sales]

    def get_reservation(self, reservation_id: str) -> Reservation:
        open_holds, ended = self._reservation_keys(reservation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(open_holds, reservation_id)
        pipe.get(ended)
        is_open, is_ended = pipe.execute()
        return self._reservation(is_open or is_ended, reservation_id)

    def get_order(self, order_id: str) -> Order:
        return self._entity(self.redis.hgetall(self._order_key(order_id)), Order, f"order {order_id!r}")

    def user_counts(self, sku: str, user: str) -> UserCounts:
        fields = (held_field(identifier(user, "user id")), bought_field(user))
        key = self.keys.for_bucket(sku, home_bucket(user, self.buckets_of(sku))).sku(sku)
        return self._counts(self.redis.hmget(key, fields))

    def queue_figures(self, sku: str) -> QueueFigures:
        """A waiting room's line, live admissions, counts and time in line, read in one round trip."""
        seconds, micros = self.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        pipe = self.redis.pipeline(transaction=False)
        self._queue_reads(sku, now, pipe)
        return self._figures(sku, now, pipe.execute())

    def read_events(self, partition: int, after: str = "-", count: int | None = None) -> list[Event]:
        """Events of a partition's stream after the given stream id ("-": from the start)."""
        p = self.keys.partition(partition)
        start = "-" if after == "-" else f"({after}"
        return self._events(p, self.redis.xrange(p.events(), start, "+", count=count))

    def close(self) -> None:
        self.redis.close()


class AsyncEngine(_Common):
    """The asyncio client. Concurrent calls are auto-pipelined into shared round trips (per node on a
    cluster, where the engine's reads go through the same pipelines)."""

    def __init__(
        self,
        client: AsyncClient,
        config: EngineConfig | None = None,
        *,
        pipelining: bool = True,
        max_batch: int = 256,
        max_inflight: int = 4,
        router: ClusterRouter | None = None,
    ) -> None:
        super().__init__(config)
        self.redis = client
        self.cluster = router is not None
        self._router = router
        self._pipeline: AutoPipeline | ClusterRouter | None = router
        if router is not None:
            router.load_scripts = self._load_scripts_on
        if router is None and pipelining:
            assert isinstance(client, aioredis.Redis), "a cluster client needs its router"
            self._pipeline = AutoPipeline(
                client,
                self.load_scripts,
                max_batch=max_batch,
                max_inflight=max_inflight,
                wait=self.config.wait,
            )
        # Plain reserves of one SKU at the same moment, as one script call (engine/coalescing.py); not in
        # WAIT mode, whose NotReplicated is per script call, and not without the auto-pipeline.
        self._coalescer = (
            ReserveCoalescer(self.ops, self._run, max_items=self.config.coalesce_reserves)
            if self._pipeline is not None and self.config.coalesce_reserves > 1 and self.config.wait is None
            else None
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        config: EngineConfig | None = None,
        *,
        max_connections: int = 32,
        pool_timeout: float = 10.0,
        pipelining: bool = True,
        cluster: bool = False,
        max_batch: int = 256,
        max_inflight: int = 4,
    ) -> AsyncEngine:
        """On one Redis, or (``cluster=True``) on the Redis Cluster that ``url`` is a node of: then every
        call goes through the auto-pipeline of its slot's node (``pipelining`` has no say), and the pool
        limits hold per node."""
        client = async_redis_client(
            url, cluster=cluster, max_connections=max_connections, pool_timeout=pool_timeout
        )
        if not cluster:
            return cls(client, config, pipelining=pipelining, max_batch=max_batch, max_inflight=max_inflight)
        first, others = cluster_startup_nodes(url, cluster=True)
        options = parse_url(first)
        startup = [(str(options.pop("host", "127.0.0.1")), int(options.pop("port", 6379))), *others]
        options.pop("db", None)  # a cluster has database 0 only
        router = ClusterRouter(
            startup,
            {**options, "decode_responses": True, "retry": _no_retry()},
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            max_batch=max_batch,
            max_inflight=max_inflight,
            redirect_timeout=pool_timeout,
            wait=(config or EngineConfig()).wait,
        )
        return cls(client, config, router=router)

    @classmethod
    def from_settings(cls, settings: Settings, *, max_connections: int | None = None) -> AsyncEngine:
        """The client the settings name: FLASHSALE_REDIS_URL, FLASHSALE_REDIS_CLUSTER, the pool's size."""
        return cls.from_url(
            _url_of(settings),
            settings.engine_config(),
            max_connections=max_connections or settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout_s,
            cluster=settings.redis_cluster,
        )

    async def load_scripts(self) -> None:
        """Loads the scripts (on a cluster: on every master, after reading the slot map) and checks the
        keyspace's partition count (``check_layout``)."""
        if self._router is not None:
            await self._router.refresh()  # the slot map, read before the first call
            await asyncio.gather(*(self._load_scripts_on(client) for client in self._router.masters()))
        else:
            for script in self.scripts.values():
                await self.redis.script_load(script.source)
        await self.check_layout()

    async def check_layout(self) -> None:
        """Records this process's partition count on first use; PartitionCountMismatch on another."""
        key, count = self.keys.layout(), self.config.partitions
        if self._router is not None:
            await self._read(key, "HSETNX", key, "partitions", count)
            recorded = await self._read(key, "HGET", key, "partitions")
        else:
            await self.redis.hsetnx(key, "partitions", count)
            recorded = await self.redis.hget(key, "partitions")
        check_layout(recorded, count, key)

    async def _load_scripts_on(self, client: aioredis.Redis) -> None:
        """Every script into one cluster node's cache (every master, or one that answered NOSCRIPT)."""
        for script in self.scripts.values():
            await client.script_load(script.source)

    async def _run(self, call: Call[T]) -> T:
        sha = self.scripts[call.script].sha
        try:
            if self._pipeline is not None:  # the hot path: one frame, no loop
                reply = await self._pipeline.evalsha(sha, call.keys, call.args)
            else:
                reply = await self._evalsha(sha, call)
        except ResponseError as error:
            # A refusal (most calls of a sold-out sale), raised without a local holding it: no cycle.
            message = str(error)
            if not message.startswith(NEEDS_KEYS):
                raise (from_reply(message) or error) from None
            return await self._run_again(sha, call.with_keys(needed_keys(message)))
        return call.parse(reply)

    async def _run_again(self, sha: str, call: Call[T]) -> T:
        """A call a script asked more keys for (nothing ran), sent again with them until it answers."""
        for _ in range(MAX_KEY_ROUNDS - 1):
            try:
                if self._pipeline is not None:
                    reply = await self._pipeline.evalsha(sha, call.keys, call.args)
                else:
                    reply = await self._evalsha(sha, call)
            except ResponseError as error:
                message = str(error)
                if not message.startswith(NEEDS_KEYS):
                    raise (from_reply(message) or error) from None
                call = call.with_keys(needed_keys(message))
                continue
            return call.parse(reply)
        raise _still_asking(call)

    async def _evalsha(self, sha: str, call: Call[Any]) -> Any:
        """One call without the auto-pipeline, its scripts loaded again on NOSCRIPT (in WAIT mode, with
        its WAIT on the same connection)."""
        wait = self.config.wait
        if wait is not None:
            for attempt in (1, 2):
                pipe = self.redis.pipeline(transaction=False)
                pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
                pipe.execute_command("WAIT", *wait)
                replies = await pipe.execute(raise_on_error=False)
                if isinstance(replies[0], NoScriptError) and attempt == 1:
                    await self.load_scripts()
                    continue
                reply = release_when_replicated(replies, [True], wait)[0]
                if isinstance(reply, Exception):
                    raise reply
                return reply
        try:
            return await self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)
        except NoScriptError:
            await self.load_scripts()
            return await self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)

    async def _drive(self, plan: Plan[T]) -> T:
        """Runs a plan of several script calls (engine/buckets.py); a list step's calls concurrently."""
        outcome: Any = None
        try:
            while True:
                step = plan.send(outcome)
                if isinstance(step, list):
                    outcome = list(await asyncio.gather(*(self._outcome(c) for c in step)))
                else:
                    outcome = await self._outcome(step)
        except StopIteration as done:
            return cast(T, done.value)

    async def _outcome(self, call: Call[Any]) -> Any:
        try:
            return await self._run(call)
        except FlashSaleError as error:
            return error

    async def _hmget(self, key: str, fields: tuple[str, ...]) -> list[Any]:
        if self._router is not None:
            return list(await self._read(key, "HMGET", key, *fields))
        return list(await self.redis.hmget(key, fields))

    async def buckets_of(self, sku: str) -> int:
        """The SKU's stock bucket count (1 when it has no sale yet)."""
        known = self._buckets.get(sku)
        if known is None:
            known = self._learnt_buckets(sku, await self._hmget(self._sku_key(sku), ("available", "buckets")))
        return known

    # -- state changes: one script each -------------------------------------------------------------------
    async def load_sale(self, settings: SaleSettings, *, buckets: int | None = None) -> Sale:
        """Creates or changes a sale; ``buckets`` > 1 splits a new sale's stock (engine/buckets.py)."""
        count = buckets or await self.buckets_of(settings.sku)
        if not 1 <= count <= self.config.partitions:
            raise InvalidArgument(f"buckets must be 1..{self.config.partitions} (one partition each)")
        if count == 1:
            return await self._run(self.ops.load_sale(settings))
        await self._drive(stock_buckets.load_sale(self.ops, settings, count))
        return await self.get_sale(settings.sku)

    async def reserve(
        self,
        sku: str,
        user: str,
        quantity: int = 1,
        *,
        idempotency_key: str | None = None,
        rate: RateLimit | None = None,
    ) -> Reservation:
        count = self._buckets.get(sku) or await self.buckets_of(sku)
        if count == 1:
            if self._coalescer is not None and idempotency_key is None:
                return await self._coalescer.reserve(sku, user, quantity, rate)
            return await self._run(self.ops.reserve(sku, user, quantity, idempotency_key, rate))
        plan = stock_buckets.reserve(self.ops, sku, user, quantity, idempotency_key, rate, count)
        return await self._drive(plan)

    async def set_waiting_room(self, sku: str, room: WaitingRoom) -> Sale:
        if room.on and await self.buckets_of(sku) > 1:
            raise InvalidState(_NO_ROOM_WITH_BUCKETS)
        return await self._run(self.ops.set_waiting_room(sku, room))

    async def join_queue(self, sku: str, user: str, *, rate: RateLimit | None = None) -> QueueStanding:
        return await self._run(self.ops.queue_join(sku, user, rate))

    async def queue_status(self, sku: str, user: str, *, rate: RateLimit | None = None) -> QueueStanding:
        return await self._run(self.ops.queue_status(sku, user, rate))

    async def admit(self, sku: str, worker_id: str, batch: int = 1000) -> AdmitStep:
        return await self._run(self.ops.queue_admit(sku, worker_id, batch))

    async def begin_checkout(
        self, reservation_id: str, user: str, payment_method: str, *, idempotency_key: str | None = None
    ) -> Order:
        return await self._run(self.ops.begin_checkout(reservation_id, user, payment_method, idempotency_key))

    async def confirm(
        self, order_id: str, user: str, transaction_id: str = "", *, idempotency_key: str | None = None
    ) -> Order:
        return await self._run(self.ops.confirm(order_id, user, transaction_id, idempotency_key))

    async def fail_checkout(self, order_id: str, user: str, reason: str = "PAYMENT_DECLINED") -> Order:
        return await self._run(self.ops.fail_checkout(order_id, user, reason))

    async def release(self, reservation_id: str, user: str) -> Reservation:
        return await self._run(self.ops.release(reservation_id, user))

    async def expire(self, partition: int, limit: int = 500) -> int:
        return await self._run(self.ops.expire(partition, limit))

    async def expire_all(self, limit: int = 500) -> int:
        total = 0
        for p in range(self.config.partitions):
            total += await self.expire(p, limit)
        return total

    async def cancel_order(self, order_id: str, user: str, *, admin: bool = False) -> Order:
        return await self._run(self.ops.cancel_order(order_id, user, admin))

    async def fulfil_order(self, order_id: str) -> Order:
        return await self._run(self.ops.fulfil_order(order_id))

    async def restock(self, sku: str, delta: int) -> Sale:
        count = await self.buckets_of(sku)
        if count == 1:
            return await self._run(self.ops.restock(sku, delta))
        await self._drive(stock_buckets.restock(self.ops, sku, delta, count))
        return await self.get_sale(sku)

    async def finish_transfers(self, partition: int, grace_ms: int = stock_buckets.TRANSFER_GRACE_MS) -> int:
        """The sweeper's step for stock-bucket transfers of one partition (engine/buckets.py)."""
        return await self._drive(stock_buckets.finish_transfers(self.ops, partition, grace_ms))

    async def noop(self, sku: str) -> int:
        return await self._run(self.ops.noop(sku))

    # -- reads --------------------------------------------------------------------------------------------
    # On a cluster each read is one command through its node's pipeline (``_read``); the replies are the
    # raw RESP ones, shaped here as redis-py's callbacks shape them on one Redis.
    async def _read(self, key: str, *command: str | int) -> Any:
        assert self._router is not None
        return await self._router.command(key, *command)

    async def get_sale(self, sku: str) -> Sale:
        sale = self._sale(await self._hmget(self._sku_key(sku), SALE_AND_ROOM_FIELDS), sku)
        if sale.buckets == 1:
            return sale
        keys = self._bucket_sku_keys(sku, sale.buckets)
        others = await asyncio.gather(*(self._hmget(key, ("available", "reserved", "sold")) for key in keys))
        return self._summed(sale, list(others))

    async def list_sales(self) -> list[Sale]:
        """Every SKU's sale, sorted by SKU: two pipelined round trips (catalogs, then sales); on a cluster
        both fan out, each node getting its partitions' commands in one pipeline."""
        if self._router is not None:
            sets = [p.catalog() for p in self.keys.all()]
            members = await asyncio.gather(*(self._read(key, "SMEMBERS", key) for key in sets))
            keys = [self.keys.for_sku(sku).sku(sku) for sku in self._catalog(members)]
            rows = await asyncio.gather(
                *(self._read(key, "HMGET", key, *SALE_AND_ROOM_FIELDS) for key in keys)
            )
            sales = [sale for values in rows if (sale := sale_from_values(values)) is not None]
            return [await self.get_sale(sale.sku) if sale.buckets > 1 else sale for sale in sales]
        catalogs = self.redis.pipeline(transaction=False)
        for p in self.keys.all():
            catalogs.smembers(p.catalog())
        pipe = self.redis.pipeline(transaction=False)
        for sku in self._catalog(await catalogs.execute()):
            pipe.hmget(self.keys.for_sku(sku).sku(sku), SALE_AND_ROOM_FIELDS)
        sales = [sale for values in await pipe.execute() if (sale := sale_from_values(values)) is not None]
        return [await self.get_sale(sale.sku) if sale.buckets > 1 else sale for sale in sales]

    async def get_reservation(self, reservation_id: str) -> Reservation:
        open_holds, ended = self._reservation_keys(reservation_id)
        if self._router is not None:  # open first: a hold ends by moving from there to its record, atomically
            is_open = await self._read(open_holds, "HGET", open_holds, reservation_id)
            is_ended = None if is_open else await self._read(ended, "GET", ended)
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(open_holds, reservation_id)
            pipe.get(ended)
            is_open, is_ended = await pipe.execute()
        return self._reservation(is_open or is_ended, reservation_id)

    async def get_order(self, order_id: str) -> Order:
        key = self._order_key(order_id)
        if self._router is not None:
            fields: Mapping[Any, Any] = _as_map(await self._read(key, "HGETALL", key))
        else:
            fields = await self.redis.hgetall(key)
        return self._entity(fields, Order, f"order {order_id!r}")

    async def user_counts(self, sku: str, user: str) -> UserCounts:
        fields = (held_field(identifier(user, "user id")), bought_field(user))
        key = self.keys.for_bucket(sku, home_bucket(user, await self.buckets_of(sku))).sku(sku)
        return self._counts(await self._hmget(key, fields))

    async def queue_figures(self, sku: str) -> QueueFigures:
        """A waiting room's line, live admissions, counts and time in line (one Redis)."""
        seconds, micros = await self.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        pipe = self.redis.pipeline(transaction=False)
        self._queue_reads(sku, now, pipe)
        return self._figures(sku, now, await pipe.execute())

    async def read_events(self, partition: int, after: str = "-", count: int | None = None) -> list[Event]:
        p = self.keys.partition(partition)
        start = "-" if after == "-" else f"({after}"
        if self._router is not None:
            key = p.events()
            paging = ("COUNT", count) if count is not None else ()
            raw = await self._read(key, "XRANGE", key, start, "+", *paging)
            entries = [(sid, _as_map(flat)) for sid, flat in raw]
            return self._events(p, entries)
        return self._events(p, await self.redis.xrange(p.events(), start, "+", count=count))

    @property
    def coalescer(self) -> ReserveCoalescer | None:
        """What coalesces this client's plain reserves (its counts say how much it did), if anything does."""
        return self._coalescer

    async def close(self) -> None:
        if self._coalescer is not None:
            await self._coalescer.close()
        if self._pipeline is not None:
            await self._pipeline.close()
        await self.redis.aclose()


def _as_map(reply: Any) -> dict[Any, Any]:
    """A RESP3 map as it is, a RESP2 flat list of fields and values as a dict (redis-py 8 speaks RESP3,
    older ones RESP2)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
