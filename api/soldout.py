"""Sold-out answers from memory: once reserve refuses a SKU as sold out, this process answers
``400 OUT_OF_STOCK`` for it without asking Redis, until Redis says stock may be back.

The rule is the reserve script's own first check (lua/reserve.lua): fewer units available than asked for
and no hold whose deadline has passed is OUT_OF_STOCK, whatever else would refuse. That refusal says how
many units were left (N) and when the SKU's earliest hold ends (D ms from then), or that none is held.
From it this process keeps a flag per SKU, ``(until, N)``, and refuses a request for more than N units
while the flag lasts. The flag ends at the first of:

- a message on the SKU's partition channel ``fs:{pN}:stock`` (``Partition.stock_channel``): every script
  that may turn such a refusal into a success publishes the SKU's id in the same atomic step (units back
  to available, a hold's deadline moved earlier, a sale's settings changed; lua/includes/stock.lua);
- D: a hold that lapses by time alone gives nothing back until a reserve reaches Redis and ends it
  (lazy expiry), so the flag must let one through by then;
- the TTL (``FLASHSALE_SOLDOUT_TTL_MS``): pub/sub is fire and forget, so this bounds a false "sold out"
  when a message is lost;
- the subscription being lost: every flag goes, and none is set until it is back.

A flag may only refuse, never grant: a request it does not refuse goes to Redis as before. Two races are
closed. A reply of reserve and a message travel on different connections, so a refusal computed before
stock came back may arrive after the message announcing it: the refusal sets no flag if a message for
its SKU, or a (re)subscription, arrived after the request left (``Stamp``). And a request with an
Idempotency-Key never uses nor sets a flag: a retry must get its first answer back, which may be the hold
it made just before the SKU sold out, and a replayed refusal may be old news.

``SoldOutShortCircuit`` answers these refusals before the app's middleware and routing, so a refusal
costs a fraction of a full request (README, "Sold out"); ``api.routes.create_reservation`` applies the
same flags to whatever reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from flashsale.api.errors import ApiError
from flashsale.api.metrics import ApiMetrics
from flashsale.api.schemas import ErrorBody, ReservationRequest
from flashsale.engine import OutOfStock
from redis.exceptions import RedisClusterException, RedisError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from flashsale.api.context import Api

log = logging.getLogger("flashsale.api")
_encoder = msgspec.json.Encoder()

# The reserve script's sold-out refusal (lua/reserve.lua's header): units left, then when the first hold
# ends, in ms from the script's clock, or that none is held. Its later OUT_OF_STOCK (after ending lapsed
# holds, some may remain) has neither and sets no flag.
_SOLD_OUT = re.compile(r" has (\d+) units left; (?:none is held|the first hold ends in (\d+) ms)\Z")

# The number of SKUs a process remembers messages for before it starts counting again (a new epoch).
_MAX_REMEMBERED = 100_000
# Pauses between attempts to subscribe while Redis cannot be reached.
_FIRST_PAUSE_S = 0.05
_LAST_PAUSE_S = 2.0


class Stamp(NamedTuple):
    """What this process had heard when a reserve left: a refusal is trusted only if nothing since."""

    epoch: int
    messages: int
    sent_at: float  # the flags' clock (time.monotonic)


class SoldOutFlags:
    """The SKUs this process knows to be sold out, each ``sku -> (until, units left)``; one per process."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self.listening = False  # subscribed to every partition's stock channel
        self._flags: dict[str, tuple[float, int]] = {}
        self._messages: dict[str, int] = {}
        self._epoch = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._flags)

    # -- the hot path ------------------------------------------------------------------------------------
    def refuses(self, sku: str, quantity: int) -> bool:
        """Whether reserve would answer OUT_OF_STOCK for ``quantity`` units of ``sku``, known here."""
        flag = self._flags.get(sku)
        if flag is None or quantity <= flag[1]:
            return False
        if flag[0] <= self._clock():
            self._flags.pop(sku, None)
            return False
        return True

    def stamp(self, sku: str) -> Stamp:
        return Stamp(self._epoch, self._messages.get(sku, 0), self._clock())

    def refused(self, sku: str, stamp: Stamp, message: str) -> None:
        """Reserve refused ``sku`` with OUT_OF_STOCK and ``message``: flag it if that is still news."""
        if not self.listening or self.ttl_s <= 0:
            return
        if stamp.epoch != self._epoch or stamp.messages != self._messages.get(sku, 0):
            return  # stock may have come back after Redis answered
        match = _SOLD_OUT.search(message)
        if match is None:
            return
        until = self._clock() + self.ttl_s
        first_hold_ends_ms = match.group(2)
        if first_hold_ends_ms is not None:
            # Measured from when the request left: the script ran after that, so this is never late.
            until = min(until, stamp.sent_at + int(first_hold_ends_ms) / 1000)
        self._flags[sku] = (until, int(match.group(1)))

    # -- the listener's side -----------------------------------------------------------------------------
    def stock_back(self, sku: str) -> None:
        """A script announced ``sku``: its flag goes, and any refusal already on its way is not news."""
        self._flags.pop(sku, None)
        if len(self._messages) >= _MAX_REMEMBERED and sku not in self._messages:
            self._messages.clear()
            self._epoch += 1
        self._messages[sku] = self._messages.get(sku, 0) + 1

    def subscribed(self) -> None:
        """Every stock channel is subscribed: from now on no message is missed."""
        self._epoch += 1
        self.listening = True

    def deafened(self) -> None:
        """The subscription is gone (or never came): messages may be missed, so nothing is trusted."""
        self._epoch += 1
        self.listening = False
        self._flags.clear()


def sold_out(api: Api, sku: str, quantity: int) -> OutOfStock | None:
    """The refusal to answer from memory, counted, or None when Redis must be asked."""
    if not api.soldout.refuses(sku, quantity):
        return None
    return _counted_refusal(api.metrics, sku, quantity)


def _counted_refusal(metrics: ApiMetrics, sku: str, quantity: int) -> OutOfStock:
    metrics.count_soldout_refusal()  # flashsale_soldout_shortcircuit_total and reservations OUT_OF_STOCK
    if quantity > 1:
        return OutOfStock(f"sku {sku} has fewer than {quantity} units left")
    return OutOfStock(f"sku {sku} is sold out")


class StockListener:
    """Keeps one process subscribed to every partition's stock channel and feeds ``SoldOutFlags``.

    One dedicated connection (not one of the engine pool's). Any error, or a connection silent past a
    heartbeat that does not answer a PING within another, drops every flag, then it subscribes again.

    On a Redis Cluster one node is enough: Redis (6.2 included) broadcasts a PUBLISH, a script's too, over
    the cluster bus to every node, masters and replicas, so a subscriber on any node hears every
    partition's channel whichever master ran the script (tests/api/test_api_cluster.py checks it).
    """

    def __init__(
        self,
        flags: SoldOutFlags,
        redis: aioredis.Redis | aiocluster.RedisCluster,
        channels: Sequence[str],
        *,
        heartbeat_s: float,
    ) -> None:
        self.flags = flags
        self.channels = list(channels)
        self.heartbeat_s = heartbeat_s
        self.node: str | None = None  # host:port of the Redis subscribed to, while subscribed
        self._cluster: aiocluster.RedisCluster | None = None
        if isinstance(redis, aiocluster.RedisCluster):
            self._cluster = redis
        else:  # the engine's server and options
            self._connection_class: type[Any] = redis.connection_pool.connection_class
            self._connection_kwargs: dict[str, Any] = redis.connection_pool.connection_kwargs
        # A cluster's nodes are taken in turn from a random one: API processes spread over them, and a
        # subscription lost with its node is taken up again on the next.
        self._turn = random.randrange(1 << 16)
        self._heard = False

    async def run(self) -> None:
        """Listens until cancelled; after any failure, subscribes again (at once if it had been
        listening, else after a growing pause)."""
        pause = _FIRST_PAUSE_S
        while True:
            self._heard = False
            client = None
            try:
                client = await self._subscriber()
                await self._listen(client)
            except (RedisError, RedisClusterException, OSError, TimeoutError) as error:
                log.warning("event=soldout_listener_lost node=%s error=%r", self.node, str(error))
            except Exception:
                log.exception("event=soldout_listener_failed node=%s", self.node)
            finally:
                self.flags.deafened()
                self.node = None
                if client is not None:
                    await client.aclose()
            pause = _FIRST_PAUSE_S if self._heard else min(pause * 2, _LAST_PAUSE_S)
            await asyncio.sleep(pause)

    async def _subscriber(self) -> aioredis.Redis:
        """A client of one connection, to the engine's Redis (on a cluster: the next node in turn), with
        the engine's options; no command ever borrows it."""
        if self._cluster is None:
            connection_class, kwargs = self._connection_class, self._connection_kwargs
        else:
            if not self._cluster.get_nodes():
                await self._cluster.initialize()  # the slot map: which nodes there are
            nodes = sorted(self._cluster.get_nodes(), key=lambda node: node.name)
            node = nodes[self._turn % len(nodes)]
            self._turn += 1
            connection_class, kwargs = node.connection_class, node.connection_kwargs
        pool = aioredis.ConnectionPool(
            connection_class=connection_class, max_connections=1, **{**kwargs, "decode_responses": True}
        )
        self.node = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        return aioredis.Redis(connection_pool=pool)

    async def _listen(self, client: aioredis.Redis) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(*self.channels)
            confirmed = 0
            while confirmed < len(self.channels):
                message = await pubsub.get_message(timeout=self.heartbeat_s)
                if message is None:
                    raise TimeoutError("the stock channels' subscription was not confirmed")
                if message["type"] == "subscribe":
                    confirmed += 1
            self.flags.subscribed()
            self._heard = True
            log.info("event=soldout_listener_subscribed channels=%d node=%s", confirmed, self.node)
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=self.heartbeat_s)
                if message is None:
                    if pinged:
                        raise TimeoutError("the stock channels' connection did not answer a PING")
                    await pubsub.ping()
                    pinged = True
                    continue
                pinged = False
                if message["type"] == "message":
                    self.flags.stock_back(message["data"])
        finally:
            await pubsub.aclose()


class SoldOutShortCircuit:
    """ASGI middleware, the app's first: ``POST /api/v1/reservations`` for a SKU flagged here is answered
    ``400 OUT_OF_STOCK`` at once, as the handler would (same caller check, rate limit, body rules,
    metrics and error shape), without the middleware, routing and request objects in between: most of
    what a request costs in Python. Anything else, or anything off the plain path (no or a bad token, an
    Idempotency-Key, a body in pieces or of another shape, a rate limit hit), goes on to the app with its
    body untouched, and the app answers it as ever."""

    def __init__(self, app: ASGIApp, route: BaseRoute, metrics: ApiMetrics) -> None:
        self.app = app
        self.route = route  # POST /api/v1/reservations: named in scope["route"] for Edge's metric label
        self.path: str = getattr(route, "path")  # noqa: B009 (a BaseRoute has no declared path)
        self.metrics = metrics
        self._decoder = msgspec.json.Decoder(ReservationRequest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        api: Api = scope["app"].state.api
        if not len(api.soldout):  # nothing is sold out here: not a byte read
            await self.app(scope, receive, send)
            return
        message = await receive()
        refusal = None
        if message["type"] == "http.request" and not message.get("more_body", False):
            refusal = self._refusal(api, scope, message["body"])
        if refusal is None:
            await self.app(scope, _replay(message, receive), send)
            return
        body = _encoder.encode(
            ErrorBody(
                error=refusal.code,
                message=refusal.message,
                status=400,
                path=scope["path"],
                timestamp=datetime.now(UTC),
            )
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        scope["route"] = self.route  # timed by Edge under the route's own label, as the handler's answer is
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, api: Api, scope: Scope, body: bytes) -> OutOfStock | None:
        token = content_type = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's request.headers reads them
            if name == b"authorization":
                token = value if token is None else token
            elif name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"idempotency-key":
                return None
        if token is None or content_type is None or len(body) > api.settings.max_body_bytes:
            return None
        if content_type.partition(b";")[0].strip().lower() != b"application/json":
            return None
        scheme, _, credentials = token.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        try:
            request: ReservationRequest = self._decoder.decode(body)
            if not api.soldout.refuses(request.sku_id, request.quantity):
                return None
            caller = api.auth.verify(credentials.strip().decode("latin-1"))
            api.limiter.take(caller.user)
        except (msgspec.DecodeError, ApiError, UnicodeDecodeError):
            return None
        return _counted_refusal(api.metrics, request.sku_id, request.quantity)


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with a message already read put back in front."""
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
