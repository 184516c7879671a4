"""The engine's two clients, sync (threads) and asyncio, with the same operations and semantics.

Every state change is one EVALSHA of a script in ``lua/`` (built by ``engine.operations``); reads are
plain HGETALL/XRANGE. The asyncio client auto-pipelines (``engine.pipelining``). Neither client lets
redis-py retry a command on a connection error: a script must never run twice because a reply was lost;
callers retry with an idempotency key instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from .errors import FlashSaleError, NotFound, from_reply
from .events import Event, parse_entry
from .keys import Partition, bought_field, held_field
from .models import (
    SALE_FIELDS,
    Order,
    Reservation,
    Sale,
    SaleSettings,
    UserCounts,
    from_hash,
    reservation_from_record,
    sale_from_values,
)
from .operations import Call, Operations, identifier
from .pipelining import AutoPipeline
from .scripts import Script, load_scripts
from .settings import EngineConfig

T = TypeVar("T")


def _raise_engine_error(error: ResponseError) -> FlashSaleError | ResponseError:
    return from_reply(str(error)) or error


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class _Common:
    """What both clients share: configuration, key layout, scripts, and decoding of reads."""

    def __init__(self, config: EngineConfig | None) -> None:
        self.config = config or EngineConfig()
        self.ops = Operations(self.config)
        self.keys = self.ops.keys
        self.scripts: dict[str, Script] = load_scripts()

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
        return sorted(str(sku) for members in members_per_partition for sku in members)

    @staticmethod
    def _events(partition: Partition, entries: Any) -> list[Event]:
        return [parse_entry(partition.index, stream_id, fields) for stream_id, fields in entries or ()]


class Engine(_Common):
    """The sync client, safe to share between threads (its connection pool waits when exhausted)."""

    def __init__(self, client: redis.Redis, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self.redis = client

    @classmethod
    def from_url(
        cls,
        url: str,
        config: EngineConfig | None = None,
        *,
        max_connections: int = 64,
        pool_timeout: float = 10.0,
    ) -> Engine:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            decode_responses=True,
            retry=_no_retry(),
        )
        return cls(redis.Redis(connection_pool=pool), config)

    def load_scripts(self) -> None:
        for script in self.scripts.values():
            self.redis.script_load(script.source)

    def _run(self, call: Call[T]) -> T:
        sha = self.scripts[call.script].sha
        try:
            try:
                reply = self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)
            except NoScriptError:
                self.load_scripts()
                reply = self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)
        except ResponseError as error:
            raise _raise_engine_error(error) from None
        return call.parse(reply)

    # -- state changes: one script each -------------------------------------------------------------------
    def load_sale(self, settings: SaleSettings) -> Sale:
        return self._run(self.ops.load_sale(settings))

    def reserve(
        self, sku: str, user: str, quantity: int = 1, *, idempotency_key: str | None = None
    ) -> Reservation:
        return self._run(self.ops.reserve(sku, user, quantity, idempotency_key))

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
        return self._run(self.ops.restock(sku, delta))

    def noop(self, sku: str) -> int:
        return self._run(self.ops.noop(sku))

    # -- reads --------------------------------------------------------------------------------------------
    def get_sale(self, sku: str) -> Sale:
        return self._sale(self.redis.hmget(self._sku_key(sku), SALE_FIELDS), sku)

    def list_sales(self) -> list[Sale]:
        """Every SKU's sale, sorted by SKU: two pipelined round trips (catalogs, then sales)."""
        catalogs = self.redis.pipeline(transaction=False)
        for p in self.keys.all():
            catalogs.smembers(p.catalog())
        pipe = self.redis.pipeline(transaction=False)
        for sku in self._catalog(catalogs.execute()):
            pipe.hmget(self.keys.for_sku(sku).sku(sku), SALE_FIELDS)
        return [sale for values in pipe.execute() if (sale := sale_from_values(values)) is not None]

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
        return self._counts(self.redis.hmget(self._sku_key(sku), fields))

    def read_events(self, partition: int, after: str = "-", count: int | None = None) -> list[Event]:
        """Events of a partition's stream after the given stream id ("-": from the start)."""
        p = self.keys.partition(partition)
        start = "-" if after == "-" else f"({after}"
        return self._events(p, self.redis.xrange(p.events(), start, "+", count=count))

    def close(self) -> None:
        self.redis.close()


class AsyncEngine(_Common):
    """The asyncio client. Concurrent calls are auto-pipelined into shared round trips."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: EngineConfig | None = None,
        *,
        pipelining: bool = True,
        max_batch: int = 256,
        max_inflight: int = 4,
    ) -> None:
        super().__init__(config)
        self.redis = client
        self._pipeline = (
            AutoPipeline(client, self.load_scripts, max_batch=max_batch, max_inflight=max_inflight)
            if pipelining
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
    ) -> AsyncEngine:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            decode_responses=True,
            retry=_no_retry(),
        )
        return cls(aioredis.Redis(connection_pool=pool), config, pipelining=pipelining)

    async def load_scripts(self) -> None:
        for script in self.scripts.values():
            await self.redis.script_load(script.source)

    async def _run(self, call: Call[T]) -> T:
        sha = self.scripts[call.script].sha
        if self._pipeline is not None:
            try:
                reply = await self._pipeline.evalsha(sha, call.keys, call.args)
            except ResponseError as error:
                raise _raise_engine_error(error) from None
            return call.parse(reply)
        try:
            try:
                reply = await self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)
            except NoScriptError:
                await self.load_scripts()
                reply = await self.redis.evalsha(sha, len(call.keys), *call.keys, *call.args)
        except ResponseError as error:
            raise _raise_engine_error(error) from None
        return call.parse(reply)

    # -- state changes: one script each -------------------------------------------------------------------
    async def load_sale(self, settings: SaleSettings) -> Sale:
        return await self._run(self.ops.load_sale(settings))

    async def reserve(
        self, sku: str, user: str, quantity: int = 1, *, idempotency_key: str | None = None
    ) -> Reservation:
        return await self._run(self.ops.reserve(sku, user, quantity, idempotency_key))

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
        return await self._run(self.ops.restock(sku, delta))

    async def noop(self, sku: str) -> int:
        return await self._run(self.ops.noop(sku))

    # -- reads --------------------------------------------------------------------------------------------
    async def get_sale(self, sku: str) -> Sale:
        return self._sale(await self.redis.hmget(self._sku_key(sku), SALE_FIELDS), sku)

    async def list_sales(self) -> list[Sale]:
        """Every SKU's sale, sorted by SKU: two pipelined round trips (catalogs, then sales)."""
        catalogs = self.redis.pipeline(transaction=False)
        for p in self.keys.all():
            catalogs.smembers(p.catalog())
        pipe = self.redis.pipeline(transaction=False)
        for sku in self._catalog(await catalogs.execute()):
            pipe.hmget(self.keys.for_sku(sku).sku(sku), SALE_FIELDS)
        return [sale for values in await pipe.execute() if (sale := sale_from_values(values)) is not None]

    async def get_reservation(self, reservation_id: str) -> Reservation:
        open_holds, ended = self._reservation_keys(reservation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(open_holds, reservation_id)
        pipe.get(ended)
        is_open, is_ended = await pipe.execute()
        return self._reservation(is_open or is_ended, reservation_id)

    async def get_order(self, order_id: str) -> Order:
        return self._entity(await self.redis.hgetall(self._order_key(order_id)), Order, f"order {order_id!r}")

    async def user_counts(self, sku: str, user: str) -> UserCounts:
        fields = (held_field(identifier(user, "user id")), bought_field(user))
        return self._counts(await self.redis.hmget(self._sku_key(sku), fields))

    async def read_events(self, partition: int, after: str = "-", count: int | None = None) -> list[Event]:
        p = self.keys.partition(partition)
        start = "-" if after == "-" else f"({after}"
        return self._events(p, await self.redis.xrange(p.events(), start, "+", count=count))

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.close()
        await self.redis.aclose()
