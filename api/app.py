"""The Starlette app: ``create_app(settings)`` wires the engine, auth, rate limit, payments and metrics
to the endpoints of ``api.routes`` and serves the storefront (``api/static``) at ``/``.

``app_from_env`` is the factory ``flashsale serve`` hands to uvicorn (each worker process builds its own).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

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
from flashsale.engine import AsyncEngine, FlashSaleError
from flashsale.engine.settings import Settings
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

log = logging.getLogger("flashsale.api")

STATIC_DIR = Path(__file__).resolve().parent / "static"
_encoder = msgspec.json.Encoder()


def _route(endpoint: Endpoint) -> Route:
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

    return Route(endpoint.path, respond, methods=[endpoint.method], name=handler.__name__)


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
        )
        log.info("event=api_started pid=%d redis_pool=%d", os.getpid(), settings.redis_max_connections)
        try:
            yield
        finally:
            if own_engine:
                await live.close()

    routes: list[BaseRoute] = [_route(endpoint) for endpoint in ENDPOINTS]
    storefront = StaticFiles(directory=static_dir, html=True, check_dir=False)
    routes.append(Mount("/", storefront, name="storefront"))
    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        FlashSaleError: error_response,
        ApiError: error_response,
        HTTPException: error_response,
        RedisError: error_response,
    }
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestTimer, metrics=metrics), Middleware(CatchAll)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """Factory for uvicorn: settings from FLASHSALE_* variables (FLASHSALE_PAYMENT_DELAY_MS slows the
    simulated payment gateway, for demos and load tests)."""
    settings = Settings.from_env()
    return create_app(settings, gateway=SimulatedGateway(delay_s=settings.payment_delay_ms / 1000))
