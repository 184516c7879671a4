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
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import redis.asyncio as aioredis
from flashsale.api.errors import ApiError
from flashsale.api.metrics import ApiMetrics
from flashsale.api.schemas import ErrorBody, ReservationRequest
from flashsale.engine import OutOfStock
from redis.exceptions import RedisError
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
    """

    def __init__(
        self,
        flags: SoldOutFlags,
        redis: aioredis.Redis,
        channels: Sequence[str],
        *,
        heartbeat_s: float,
    ) -> None:
        self.flags = flags
        self.channels = list(channels)
        self.heartbeat_s = heartbeat_s
        pool = redis.connection_pool
        # The engine's server and options, on a connection of its own that no command ever borrows.
        kwargs = {**pool.connection_kwargs, "decode_responses": True}
        self._connection_class = pool.connection_class
        self._connection_kwargs = kwargs
        self._heard = False

    async def run(self) -> None:
        """Listens until cancelled; after any failure, subscribes again (at once if it had been
        listening, else after a growing pause)."""
        pause = _FIRST_PAUSE_S
        while True:
            self._heard = False
            client = aioredis.Redis(
                connection_pool=aioredis.ConnectionPool(
                    connection_class=self._connection_class, max_connections=1, **self._connection_kwargs
                )
            )
            try:
                await self._listen(client)
            except (RedisError, OSError, TimeoutError) as error:
                log.warning("event=soldout_listener_lost error=%r", str(error))
            except Exception:
                log.exception("event=soldout_listener_failed")
            finally:
                self.flags.deafened()
                await client.aclose()
            pause = _FIRST_PAUSE_S if self._heard else min(pause * 2, _LAST_PAUSE_S)
            await asyncio.sleep(pause)

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
            log.info("event=soldout_listener_subscribed channels=%d", confirmed)
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
