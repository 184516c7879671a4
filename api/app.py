"""The Starlette app: ``create_app(settings)`` wires the engine, auth, rate limit, payments and metrics
to the endpoints of ``api.routes`` and serves the storefront (``api/static``) at ``/``.

``app_from_env`` is the factory ``flashsale serve`` hands to uvicorn (each worker process builds its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from flashsale.api import openapi
from flashsale.api.auth import Authenticator
from flashsale.api.checkout import Checkout
from flashsale.api.coalescing import SingleFlight
from flashsale.api.context import Api
from flashsale.api.decoding import read_json
from flashsale.api.errors import ApiError, CatchAll, error_response
from flashsale.api.metrics import ApiMetrics, RequestTimer
from flashsale.api.payments import PaymentGateway, SimulatedGateway
from flashsale.api.ratelimit import UserRateLimiter
from flashsale.api.routes import ENDPOINTS, Call, Endpoint
from flashsale.api.soldout import SoldOutFlags, SoldOutShortCircuit, StockListener
from flashsale.engine import AsyncEngine, FlashSaleError
from flashsale.engine.settings import Settings
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

log = logging.getLogger("flashsale.api")

STATIC_DIR = Path(__file__).resolve().parent / "static"
_encoder = msgspec.json.Encoder()


def _responder(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    handler, access, body_type, status = endpoint.handler, endpoint.access, endpoint.body, endpoint.status

    async def respond(request: Request) -> Response:
        api: Api = request.app.state.api
        caller = None
        if access == "user":
            caller = api.auth.caller(request)
            api.limiter.take(caller.user)
        elif access == "admin":
            caller = api.auth.admin(request)
        body = None if body_type is None else await read_json(request, body_type, api.settings.max_body_bytes)
        result = await handler(api, Call(request, caller, body))
        if isinstance(result, Response):
            return result
        return Response(_encoder.encode(result), status, media_type="application/json")

    return respond


class ApiPath(Route):
    """One path of the API with every method it has (a GET also answers HEAD). Any other method is
    405 with ``Allow`` naming the real ones: one Route per method would let the first one found answer
    for all, with only its own method in ``Allow``."""

    def __init__(self, path: str, endpoints: list[Endpoint], concrete: frozenset[str] = frozenset()) -> None:
        responders = {endpoint.method: _responder(endpoint) for endpoint in endpoints}
        if "GET" in responders:
            responders.setdefault("HEAD", responders["GET"])

        async def by_method(request: Request) -> Response:
            return await responders[request.method](request)

        super().__init__(path, by_method, methods=list(responders), name=endpoints[0].handler.__name__)
        self.allow = ", ".join(sorted(responders))
        # The API's paths without parameters: they are theirs, not this template's (OpenAPI's rule,
        # concrete before templated), so GET /orders/checkout is 405, not "no order 'checkout'".
        self.concrete = frozenset(concrete) if self.param_convertors else frozenset()

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.concrete and scope["type"] == "http" and _route_path(scope) in self.concrete:
            return Match.NONE, {}
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(405, headers={"Allow": self.allow})
        await super().handle(scope, receive, send)


class Storefront(BaseRoute):
    """The shop's static files (``api/static``) at ``/``, on GET and HEAD, for every path no API route
    claims (a path the API has answers 405 for a method it lacks, never the shop's 404). Another method
    on a file the shop serves is 405 (``Allow: GET, HEAD``); anything else falls through to 404."""

    path = "/"  # the metrics' route label: one series for the whole shop

    def __init__(self, directory: Path, api_routes: list[BaseRoute]) -> None:
        self.files = StaticFiles(directory=directory, html=True, check_dir=False)
        self.api_routes = api_routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        if any(route.matches(scope)[0] is not Match.NONE for route in self.api_routes):
            return Match.NONE, {}
        if scope["method"] in ("GET", "HEAD"):
            return Match.FULL, {}
        return (Match.PARTIAL if self._serves(scope) else Match.NONE), {}

    def _serves(self, scope: Scope) -> bool:
        """Whether a GET of this path would answer a file (the index of a directory included)."""
        path = self.files.get_path(scope)
        for candidate in (path, os.path.join(path, "index.html")):
            try:
                _, found = self.files.lookup_path(candidate)
            except (OSError, ValueError):  # a name too long, a NUL byte: not a file of ours
                return False
            if found is not None and stat.S_ISREG(found.st_mode):
                return True
        return False

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(405, headers={"Allow": "GET, HEAD"})
        await self.files(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _routes(static_dir: Path) -> list[BaseRoute]:
    by_path: dict[str, list[Endpoint]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, []).append(endpoint)
    concrete = frozenset(path for path in by_path if "{" not in path)
    api_routes: list[BaseRoute] = [ApiPath(path, group, concrete) for path, group in by_path.items()]
    return [*api_routes, Storefront(static_dir, api_routes)]


def create_app(
    settings: Settings,
    engine: AsyncEngine | None = None,
    *,
    gateway: PaymentGateway | None = None,
    static_dir: Path = STATIC_DIR,
) -> Starlette:
    """The API. Without ``engine`` it connects to ``settings.redis_url`` at startup (a waiting pool of
    ``redis_max_connections``) and closes it at shutdown; a given engine is the caller's to close."""
    if not settings.jwt_secret:
        raise ValueError("FLASHSALE_JWT_SECRET is not set: the API cannot verify bearer tokens without it")
    if engine is None and not settings.redis_url:
        raise ValueError("FLASHSALE_REDIS_URL is not set: the API needs a Redis server to talk to")
    metrics = ApiMetrics()
    soldout = SoldOutFlags(settings.soldout_ttl_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_engine = engine is None
        live = engine or AsyncEngine.from_url(
            str(settings.redis_url),
            settings.engine_config(),
            max_connections=settings.redis_max_connections,
            pool_timeout=settings.redis_pool_timeout_s,
        )
        try:
            await live.load_scripts()
        except RedisError as error:  # not fatal: readiness says DOWN, NOSCRIPT reloads them later
            log.warning("event=scripts_not_loaded error=%r", str(error))
        app.state.api = Api(
            settings=settings,
            engine=live,
            auth=Authenticator(settings.jwt_secret or "", settings.jwt_issuer),
            limiter=UserRateLimiter(settings.user_rate_limit_per_s, settings.user_rate_burst),
            metrics=metrics,
            checkout=Checkout(live, gateway or SimulatedGateway(), metrics),
            reads=SingleFlight(),
            openapi=msgspec.json.encode(openapi.build(ENDPOINTS)),
            soldout=soldout,
        )
        listening = None
        if soldout.enabled:  # sold-out answers from memory, cleared by the scripts' stock messages
            channels = [partition.stock_channel() for partition in live.keys.all()]
            listener = StockListener(soldout, live.redis, channels, heartbeat_s=max(soldout.ttl_s, 1.0))
            listening = asyncio.create_task(listener.run(), name="soldout-listener")
        log.info("event=api_started pid=%d redis_pool=%d", os.getpid(), settings.redis_max_connections)
        try:
            yield
        finally:
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
            metrics.flush_soldout_refusals()
            if own_engine:
                await live.close()

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        FlashSaleError: error_response,
        ApiError: error_response,
        HTTPException: error_response,
        RedisError: error_response,
    }
    reservations = next(e.path for e in ENDPOINTS if e.handler.__name__ == "create_reservation")
    app = Starlette(
        routes=_routes(static_dir),
        middleware=[
            # Sold-out refusals answered before anything else (api/soldout.py); a no-op while none is.
            Middleware(SoldOutShortCircuit, path=reservations, metrics=metrics),
            Middleware(RequestTimer, metrics=metrics),
            Middleware(CatchAll),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    # No 307 from /api/v1/reservations/ to /api/v1/reservations: a path the API lacks is 404 whatever
    # the method (Starlette redirected the methods the storefront does not take, and only those).
    app.router.redirect_slashes = False
    return app


def app_from_env() -> Starlette:
    """Factory for uvicorn: settings from FLASHSALE_* variables (FLASHSALE_PAYMENT_DELAY_MS slows the
    simulated payment gateway, for demos and load tests)."""
    settings = Settings.from_env()
    return create_app(settings, gateway=SimulatedGateway(delay_s=settings.payment_delay_ms / 1000))
