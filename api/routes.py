"""Every endpoint of the API in one list, ``ENDPOINTS``: method, path, handler, types and who may call.

Handlers are short: the decoded body and the caller come in, one engine call happens, a Struct goes out.
``api.app`` turns each Endpoint into a Starlette Route; ``api.openapi`` documents the same list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from flashsale.api import schemas
from flashsale.api.auth import Caller, issue_token
from flashsale.api.context import Api
from flashsale.api.errors import ApiError
from flashsale.api.health import readiness, redis_health
from flashsale.api.metrics import read_payments
from flashsale.api.schemas import (
    Alive,
    CheckoutRequest,
    DemoToken,
    DemoTokenRequest,
    OrderBody,
    Product,
    QueueBody,
    Readiness,
    ReservationBody,
    ReservationRequest,
    RestockRequest,
    SaleRequest,
    WaitingRoomRequest,
)
from flashsale.api.soldout import sold_out
from flashsale.engine import FlashSaleError, Forbidden, SaleSettings
from flashsale.engine.models import WaitingRoom
from flashsale.engine.operations import RateLimit
from flashsale.writeback.lag import read_lag_async
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisClusterException, RedisError
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("flashsale.api")

# An Idempotency-Key: 1-200 printable ASCII characters (the IETF draft's sf-string; the engine keeps up
# to 200), no space at either end (HTTP would have trimmed it). The OpenAPI document states the same.
IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]{0,198}[!-~])?")


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it."""

    request: Request
    caller: Caller | None
    body: Any
    shared_rate: RateLimit | None = None  # Api.rate when this process has seen the caller before

    @property
    def user(self) -> str:
        assert self.caller is not None, "an authenticated endpoint"
        return self.caller.user

    def param(self, name: str) -> str:
        value: str = self.request.path_params[name]
        return value

    @property
    def idempotency_key(self) -> str | None:
        key = self.request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            # The engine's code for a key it cannot take (it checks only the length).
            raise ApiError(
                400, "INVALID_ARGUMENT", "Idempotency-Key must be 1-200 printable ASCII characters"
            )
        return key


Handler = Callable[[Api, Call], Awaitable[Any]]
Access = Literal["public", "user", "admin"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    access: Access = "user"
    body: type[Any] | None = None
    returns: Any = None
    status: int = 200
    errors: tuple[int, ...] = field(default=())

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or "").strip()


def _own(caller: Caller | None, owner: str, what: str) -> None:
    """Users see only their own reservations and orders (403 otherwise); admins see all."""
    if caller is not None and owner != caller.user and not caller.admin:
        raise Forbidden(f"{what} belongs to another user")


# -- catalog -----------------------------------------------------------------------------------------------
async def list_products(api: Api, call: Call) -> list[Product]:
    """All SKUs on sale with live stock."""
    return [schemas.product(sale) for sale in await api.reads("catalog", api.engine.list_sales)]


async def get_product(api: Api, call: Call) -> Product:
    """One SKU with live stock."""
    sku = call.param("skuId")
    return schemas.product(await api.reads(("sale", sku), lambda: api.engine.get_sale(sku)))


# -- reservations ------------------------------------------------------------------------------------------
async def create_reservation(api: Api, call: Call) -> ReservationBody:
    """Hold units of a SKU for the caller (Idempotency-Key honoured)."""
    body: ReservationRequest = call.body
    key = call.idempotency_key
    # Sold out, known here: the script's answer without asking it. Never with a key: a retry must get
    # its first answer back, and a replayed refusal is no news of now (api/soldout.py).
    if key is None and (refusal := sold_out(api, body.sku_id, body.quantity)) is not None:
        raise refusal
    stamp = api.soldout.stamp(body.sku_id)
    try:
        reservation = await api.engine.reserve(
            body.sku_id, call.user, body.quantity, idempotency_key=key, rate=call.shared_rate
        )
    except FlashSaleError as error:
        api.metrics.count_reservation(error.code)
        if key is None and error.code == "OUT_OF_STOCK":
            api.soldout.refused(body.sku_id, stamp, error.message)
        raise
    api.metrics.count_reservation("created")
    return schemas.reservation(reservation)


async def get_reservation(api: Api, call: Call) -> ReservationBody:
    """One of the caller's reservations."""
    reservation = await api.engine.get_reservation(call.param("reservationId"))
    _own(call.caller, reservation.user, f"reservation {reservation.id}")
    return schemas.reservation(reservation)


async def release_reservation(api: Api, call: Call) -> ReservationBody:
    """Release one of the caller's reservations: its units go back on sale."""
    return schemas.reservation(await api.engine.release(call.param("reservationId"), call.user))


# -- waiting room ------------------------------------------------------------------------------------------
async def join_queue(api: Api, call: Call) -> QueueBody:
    """Take a place in the SKU's waiting room (once: a repeat answers the same place, ``new`` false)."""
    standing = await api.engine.join_queue(call.param("skuId"), call.user, rate=call.shared_rate)
    api.metrics.count_join("joined" if standing.new else "repeat")
    return schemas.queue(standing)


async def queue_position(api: Api, call: Call) -> QueueBody:
    """Where the caller stands in the SKU's waiting room: place, people ahead, estimate, or admitted."""
    return schemas.queue(await api.engine.queue_status(call.param("skuId"), call.user, rate=call.shared_rate))


# -- orders ------------------------------------------------------------------------------------------------
async def checkout(api: Api, call: Call) -> OrderBody:
    """Pay for a reservation (Idempotency-Key honoured); 402 with the FAILED order when declined."""
    return schemas.order(await api.checkout(call.user, call.body, call.idempotency_key))


async def get_order(api: Api, call: Call) -> OrderBody:
    """One of the caller's orders."""
    order = await api.engine.get_order(call.param("orderId"))
    _own(call.caller, order.user, f"order {order.id}")
    return schemas.order(order)


async def cancel_order(api: Api, call: Call) -> OrderBody:
    """Cancel one of the caller's orders, confirmed or still paying: its units go back on sale and its
    payment is refunded (or its authorization voided)."""
    return schemas.order(await api.checkout.cancel(call.param("orderId"), call.user))


# -- admin -------------------------------------------------------------------------------------------------
async def put_sale(api: Api, call: Call) -> Product:
    """Create a SKU's sale or change its settings (fields left out keep their value)."""
    body: SaleRequest = call.body
    settings = SaleSettings(
        sku=call.param("skuId"),
        name=body.name,
        price_cents=None if body.price is None else schemas.cents(body.price),
        flash_price_cents=None if body.flash_sale_price is None else schemas.cents(body.flash_sale_price),
        total=body.total,
        per_user_limit=body.per_user_limit,
        starts_at=schemas.as_ms(body.starts_at),
        ends_at=schemas.as_ms(body.ends_at),
        reservation_ttl_ms=None
        if body.reservation_ttl_seconds is None
        else 1000 * body.reservation_ttl_seconds,
        paused=body.paused,
    )
    return schemas.product(await api.engine.load_sale(settings, buckets=body.buckets))


async def put_waiting_room(api: Api, call: Call) -> Product:
    """Put a waiting room in front of a SKU's sale, change it, or turn it off (``on``: false)."""
    body: WaitingRoomRequest = call.body
    room = WaitingRoom(
        on=body.on,
        opens_at=schemas.as_ms(body.opens_at) or 0,
        admit_per_s=body.admit_per_second,
        stock_factor=body.stock_factor,
        admission_ttl_ms=1000 * body.admission_seconds,
    )
    return schemas.product(await api.engine.set_waiting_room(call.param("skuId"), room))


async def restock(api: Api, call: Call) -> Product:
    """Add units to a sale, or take available ones away."""
    body: RestockRequest = call.body
    return schemas.product(await api.engine.restock(call.param("skuId"), body.delta))


async def pause_sale(api: Api, call: Call) -> Product:
    """Pause reservations of a SKU."""
    return schemas.product(await api.engine.load_sale(SaleSettings(sku=call.param("skuId"), paused=True)))


async def resume_sale(api: Api, call: Call) -> Product:
    """Resume reservations of a SKU."""
    return schemas.product(await api.engine.load_sale(SaleSettings(sku=call.param("skuId"), paused=False)))


async def fulfil_order(api: Api, call: Call) -> OrderBody:
    """Mark a confirmed order as shipped."""
    return schemas.order(await api.engine.fulfil_order(call.param("orderId")))


async def admin_cancel_order(api: Api, call: Call) -> OrderBody:
    """Cancel any confirmed or still paying order, refunding (or voiding) its payment."""
    return schemas.order(await api.checkout.cancel(call.param("orderId"), call.user, admin=True))


# -- demo --------------------------------------------------------------------------------------------------
async def demo_token(api: Api, call: Call) -> DemoToken:
    """Demo mode only (FLASHSALE_DEMO_SIGN_IN): a shopper token for the named user, for the storefront."""
    if not api.settings.demo_sign_in:
        raise ApiError(404, "NOT_FOUND", "demo sign-in is off on this server; ask for a token")
    body: DemoTokenRequest = call.body
    ttl_s = 3600
    token = issue_token(api.settings.jwt_secret or "", api.settings.jwt_issuer, body.user, ttl_s=ttl_s)
    return DemoToken(token=token, user_id=body.user, expires_in=ttl_s)


# -- operations --------------------------------------------------------------------------------------------
async def alive(api: Api, call: Call) -> Alive:
    """The process is alive."""
    return Alive(status="UP")


async def ready(api: Api, call: Call) -> Readiness | Response:
    """Redis, PostgreSQL and Kafka, each with its status; ready (200) when Redis answers, else 503."""
    report = await readiness(api.engine, api.settings.database_url, api.settings.kafka_bootstrap)
    if report.status != "UP":
        return Response(msgspec.json.encode(report), 503, media_type="application/json")
    return report


async def metrics(api: Api, call: Call) -> Response:
    """Prometheus metrics in the text format."""
    nodes = (await redis_health(api.engine)).nodes
    try:
        sales = await api.engine.list_sales()
    except RedisError:  # still answer: the request counters are what shows an outage
        return Response(api.metrics.exposition(None, (), nodes=nodes), media_type=CONTENT_TYPE_LATEST)
    try:
        lags = await read_lag_async(api.engine.redis, api.engine.keys)
    except (RedisError, RedisClusterException) as error:  # the rest of the scrape still counts
        log.warning("event=lag_not_read error=%r", str(error))
        lags = []
    limit = api.engine.config.backlog_limit_events
    payments = await read_payments(api.gateway, api.engine.redis, api.engine.keys)
    try:
        rooms = [sale.sku for sale in sales if sale.waiting_room is not None and sale.waiting_room.on]
        queues = [await api.engine.queue_figures(sku) for sku in rooms]
    except RedisError:
        queues = []
    exposition = api.metrics.exposition(sales, lags, limit, payments, queues, nodes)
    return Response(exposition, media_type=CONTENT_TYPE_LATEST)


async def openapi(api: Api, call: Call) -> Response:
    """This document."""
    return Response(api.openapi, media_type="application/json")


V1 = "/api/v1"
ADMIN = f"{V1}/admin"
_USER = (401, 403, 404, 429)  # 403: another user's reservation or order
_BODY = (400, 413, 415)
_ADMIN = (401, 403, 404)

ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", f"{V1}/products", list_products, "public", returns=list[Product]),
    Endpoint("GET", f"{V1}/products/{{skuId}}", get_product, "public", returns=Product, errors=(404,)),
    Endpoint("POST", f"{V1}/reservations", create_reservation, body=ReservationRequest,
             returns=ReservationBody, status=201, errors=(*_BODY, *_USER, 409)),
    Endpoint("GET", f"{V1}/reservations/{{reservationId}}", get_reservation, returns=ReservationBody,
             errors=_USER),
    Endpoint("DELETE", f"{V1}/reservations/{{reservationId}}", release_reservation, returns=ReservationBody,
             errors=(*_USER, 409, 410)),
    Endpoint("POST", f"{V1}/orders/checkout", checkout, body=CheckoutRequest, returns=OrderBody, status=201,
             errors=(*_BODY, 402, *_USER, 409, 410, 502)),
    Endpoint("POST", f"{V1}/sales/{{skuId}}/queue", join_queue, returns=QueueBody, errors=(*_USER, 409)),
    Endpoint("GET", f"{V1}/sales/{{skuId}}/queue", queue_position, returns=QueueBody, errors=_USER),
    Endpoint("GET", f"{V1}/orders/{{orderId}}", get_order, returns=OrderBody, errors=_USER),
    Endpoint("POST", f"{V1}/orders/{{orderId}}/cancel", cancel_order, returns=OrderBody,
             errors=(*_USER, 409, 502)),
    Endpoint("PUT", f"{ADMIN}/sales/{{skuId}}", put_sale, "admin", body=SaleRequest, returns=Product,
             errors=(*_BODY, *_ADMIN, 409)),  # 409: a sale's stock buckets are fixed once it exists
    Endpoint("PUT", f"{ADMIN}/sales/{{skuId}}/waiting-room", put_waiting_room, "admin",
             body=WaitingRoomRequest, returns=Product, errors=(*_BODY, *_ADMIN, 409)),  # 409: bucketed
    Endpoint("POST", f"{ADMIN}/sales/{{skuId}}/restock", restock, "admin", body=RestockRequest,
             returns=Product, errors=(*_BODY, *_ADMIN)),
    Endpoint("POST", f"{ADMIN}/sales/{{skuId}}/pause", pause_sale, "admin", returns=Product, errors=_ADMIN),
    Endpoint("POST", f"{ADMIN}/sales/{{skuId}}/resume", resume_sale, "admin", returns=Product, errors=_ADMIN),
    Endpoint("POST", f"{ADMIN}/orders/{{orderId}}/fulfil", fulfil_order, "admin", returns=OrderBody,
             errors=(*_ADMIN, 409)),
    Endpoint("POST", f"{ADMIN}/orders/{{orderId}}/cancel", admin_cancel_order, "admin", returns=OrderBody,
             errors=(*_ADMIN, 409, 502)),
    Endpoint("POST", f"{V1}/demo/token", demo_token, "public", body=DemoTokenRequest, returns=DemoToken,
             status=201, errors=(*_BODY, 404)),
    Endpoint("GET", "/health", alive, "public", returns=Alive),
    Endpoint("GET", "/health/ready", ready, "public", returns=Readiness, errors=(503,)),
    Endpoint("GET", "/metrics", metrics, "public", errors=(503,)),
    Endpoint("GET", "/openapi.json", openapi, "public"),
]  # fmt: skip
