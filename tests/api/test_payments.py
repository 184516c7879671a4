"""Payments over real HTTP and Redis: authorize -> confirm -> capture, and every way it can stop half way
(the gateway times out after authorizing, a capture or refund fails, the confirm gets no answer, the
shopper cancels while paying), each repaired by the checkout itself or by a settlement pass, after which
every approved payment belongs to exactly one CONFIRMED order (captured) or was voided or refunded."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import msgspec
import redis
from flashsale.engine import AsyncEngine, Engine, Order, OrderStatus, Sale
from flashsale.engine.keys import Keyspace
from flashsale.writeback.payments import Payment, PaymentStatus, SimulatedGateway
from flashsale.writeback.settlement import Settled, Settlement
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.api.conftest import SKU, ApiServer
from tests.api.test_orders import checkout, gateway_counts, payment_of, unsettled
from tests.api.test_reservations import V1, assert_error, reserve

CONFIRMED = (OrderStatus.CONFIRMED, OrderStatus.FULFILLED)
ADMIN_ORDERS = f"{V1}/admin/orders"


# -- helpers shared with test_payments_failures.py ---------------------------------------------------------
def settle(redis_url: str, **options: Any) -> list[Settled]:
    """One settlement pass over every partition, as the worker runs it (its own gateway client)."""

    async def run() -> list[Settled]:
        engine = AsyncEngine.from_url(redis_url)
        try:
            return await Settlement(
                engine, SimulatedGateway(engine.redis, engine.keys), **options
            ).settle_all()
        finally:
            await engine.close()

    return asyncio.run(run())


def assert_payments_agree_with_orders(redis_url: str, engine: Engine) -> dict[str, int]:
    """Every approved payment belongs to exactly one CONFIRMED order and is captured, or was voided or
    refunded; nothing is left unsettled; the counts add up. Returns the gateway's counts."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        payments: dict[str, Payment] = {}
        for key in client.scan_iter(match="*:gw:ord_*", count=1000):
            fields = client.hgetall(key)
            if "status" in fields:
                payment = msgspec.convert(fields, Payment, strict=False)
                payments[payment.order_id] = payment
        order_ids = [key.split(":order:", 1)[1] for key in client.scan_iter(match="*:order:*", count=1000)]
    finally:
        client.close()
    orders: dict[str, Order] = {oid: engine.get_order(oid) for oid in order_ids}

    assert unsettled(redis_url) == [], "a payment is still not final"
    for oid, payment in payments.items():
        if payment.status == PaymentStatus.DECLINED:
            continue
        order = orders.get(oid)
        if order is not None and order.status in CONFIRMED:
            assert payment.status == PaymentStatus.CAPTURED, (oid, order.status, payment.status)
        else:
            status = order.status if order else None
            assert payment.status in (PaymentStatus.VOIDED, PaymentStatus.REFUNDED), (oid, status, payment)
    confirmed = [o for o in orders.values() if o.status in CONFIRMED]
    for order in confirmed:
        assert order.id in payments, f"{order.id} is confirmed without a payment"
    per_reservation = [o.reservation_id for o in confirmed]
    assert len(per_reservation) == len(set(per_reservation)), "a reservation paid for twice"

    counts = gateway_counts(redis_url)
    assert counts["authorized"] == counts["captured"] + counts["voided"]
    assert counts["captured"] - counts["refunded"] == len(confirmed)
    assert engine.get_sale(SKU).sold == sum(o.quantity for o in confirmed)
    return counts


class LosingConfirms(AsyncEngine):
    """An engine that loses its connection to Redis around ``confirm``, as ``plan`` says, one entry per
    confirm: "before" (the confirm never reached Redis), "after" (it ran, its reply was lost), or None."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan: deque[str | None] = deque()
        self.lost: dict[str, int] = {"before": 0, "after": 0}

    async def confirm(
        self, order_id: str, user: str, transaction_id: str = "", *, idempotency_key: str | None = None
    ) -> Order:
        loss = self.plan.popleft() if self.plan else None
        if loss == "before":
            self.lost["before"] += 1
            raise RedisConnectionError("injected: connection lost before the confirm was sent")
        order = await super().confirm(order_id, user, transaction_id, idempotency_key=idempotency_key)
        if loss == "after":
            self.lost["after"] += 1
            raise RedisConnectionError("injected: connection lost before the confirm's reply")
        return order


class HeldGateway(SimulatedGateway):
    """Stops in ``authorize`` (before it, or after it authorized) until the test lets it go on."""

    def __init__(self, *, hold_after: bool) -> None:
        super().__init__()
        self.hold_after = hold_after
        self.holding = threading.Event()
        self.proceed = threading.Event()

    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        if not self.hold_after:
            await self._hold()
        payment = await super().authorize(
            order_id=order_id, amount_cents=amount_cents, method=method, transaction_id=transaction_id
        )
        if self.hold_after:
            await self._hold()
        return payment

    async def _hold(self) -> None:
        self.holding.set()
        await asyncio.to_thread(self.proceed.wait, 20)


def metric(api: ApiServer, name: str, **labels: str) -> float | None:
    with api.client() as http:
        text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def redis_url_of(api: ApiServer) -> str:
    return str(api.settings.redis_url)


# -- the shopper cancels while paying ----------------------------------------------------------------------
def _cancel_while_paying(api: ApiServer, gateway: HeldGateway, rid: str) -> tuple[int, dict[str, Any], Any]:
    async def run() -> tuple[int, dict[str, Any], Any]:
        async with aiohttp.ClientSession(api.url, headers=api.auth("alice")) as session:
            body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
            paying = asyncio.ensure_future(session.post(f"{V1}/orders/checkout", json=body))
            assert await asyncio.to_thread(gateway.holding.wait, 10)
            order_id = await asyncio.to_thread(order_paying_for, api, rid)
            async with session.post(f"{V1}/orders/{order_id}/cancel") as response:
                cancelled = response.status, await response.json()
            gateway.proceed.set()
            async with await paying as response:
                return *cancelled, (response.status, await response.json())

    return asyncio.run(run())


def order_paying_for(api: ApiServer, rid: str) -> str:
    engine = Engine.from_url(redis_url_of(api))
    try:
        order_id = engine.get_reservation(rid).order_id
        assert order_id is not None
        return order_id
    finally:
        engine.close()


def test_cancelling_an_order_while_it_is_being_paid_for_voids_its_authorization(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = HeldGateway(hold_after=True)  # authorized, not yet confirmed
    api = start_server(gateway)
    load_sale(total=1)
    rid = engine.reserve(SKU, "alice").id

    status, cancelled, (paid_status, paid) = _cancel_while_paying(api, gateway, rid)

    assert (status, cancelled["status"]) == (200, "CANCELLED")
    assert (paid_status, paid["error"]) == (409, "INVALID_STATE")  # the confirm found it cancelled
    voided = payment_of(redis_url_of(api), cancelled["id"])
    assert voided is not None
    assert voided.status == PaymentStatus.VOIDED
    assert engine.get_reservation(rid).status == "CANCELLED"
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved, sale.sold) == (1, 0, 0)
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["authorized"], counts["captured"], counts["voided"]) == (1, 0, 1)


def test_cancelling_before_the_authorization_lands_voids_it_once_it_does(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = HeldGateway(hold_after=False)  # the checkout has begun, the gateway not answered yet
    api = start_server(gateway)
    load_sale(total=1)
    rid = engine.reserve(SKU, "alice").id

    status, cancelled, (paid_status, paid) = _cancel_while_paying(api, gateway, rid)

    assert (status, cancelled["status"]) == (200, "CANCELLED")
    assert (paid_status, paid["error"]) == (409, "INVALID_STATE")
    voided = payment_of(redis_url_of(api), cancelled["id"])
    assert voided is not None
    assert voided.status == PaymentStatus.VOIDED
    assert_payments_agree_with_orders(redis_url_of(api), engine)


# -- the gateway or Redis fails half way -------------------------------------------------------------------
def test_a_capture_that_fails_is_made_by_settlement_and_the_metrics_show_it_meanwhile(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = SimulatedGateway()
    gateway.failing = {"capture"}
    api = start_server(gateway)
    load_sale()
    rid = engine.reserve(SKU, "alice").id
    with api.client() as http:
        response = checkout(http, api, "alice", rid)
    assert response.status_code == 201, response.text  # the order is confirmed: that is the answer
    order_id = response.json()["id"]
    assert engine.get_order(order_id).status == "CONFIRMED"
    payment = payment_of(redis_url_of(api), order_id)
    assert payment is not None
    assert payment.status == PaymentStatus.AUTHORIZED
    partition = str(Keyspace().for_order(order_id).index)
    assert metric(api, "flashsale_payments_unsettled", partition=partition) == 1
    assert metric(api, "flashsale_payments_unsettled_seconds", partition=partition) is not None

    settled = settle(redis_url_of(api))

    assert [(s.order_id, s.action, s.reason) for s in settled] == [(order_id, "capture", "order_confirmed")]
    assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert metric(api, "flashsale_payments_unsettled", partition=partition) == 0
    assert metric(api, "flashsale_payment_settlements_total", action="capture") == 1
    assert metric(api, "flashsale_payments_total", result="captured") == 1


def test_a_gateway_that_times_out_after_authorizing_is_asked_again_and_the_checkout_completes(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = SimulatedGateway()
    gateway.timeouts_after_authorize = 1
    api = start_server(gateway)
    load_sale()
    rid = engine.reserve(SKU, "alice").id
    with api.client() as http:
        response = checkout(http, api, "alice", rid)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "CONFIRMED"
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["authorized"], counts["captured"]) == (1, 1)


def test_a_gateway_that_never_answers_fails_the_order_and_settlement_voids_what_it_authorized(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = SimulatedGateway()
    gateway.timeouts_after_authorize = 2  # both tries authorize, neither answer arrives
    api = start_server(gateway)
    load_sale()
    rid = engine.reserve(SKU, "alice").id
    with api.client() as http:
        assert_error(checkout(http, api, "alice", rid), 502, "PAYMENT_GATEWAY_ERROR")
        failed_id = engine.get_order(_only_order(api)).id
        assert engine.get_order(failed_id).status == "FAILED"
        assert engine.get_reservation(rid).order_id is None  # the hold is kept: the shopper may pay again
        held = payment_of(redis_url_of(api), failed_id)
        assert held is not None
        assert held.status == PaymentStatus.AUTHORIZED  # money held for an order that failed ...

        assert [(s.action, s.reason) for s in settle(redis_url_of(api))] == [("void", "order_failed")]

        retried = checkout(http, api, "alice", rid)  # ... released; and the retry pays once
    assert retried.status_code == 201, retried.text
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["authorized"], counts["captured"], counts["voided"]) == (2, 1, 1)


def _only_order(api: ApiServer) -> str:
    client = redis.Redis.from_url(redis_url_of(api), decode_responses=True)
    try:
        (key,) = list(client.scan_iter(match="*:order:*"))
        return str(key.split(":order:", 1)[1])
    finally:
        client.close()


def test_an_unanswered_confirm_is_503_payment_pending_and_nothing_is_voided_until_settlement_knows(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine, redis_url: str
) -> None:
    losing = LosingConfirms.from_url(redis_url)
    losing.plan.extend(["after", "before"])
    api = start_server(engine=losing)
    load_sale(total=2, per_user_limit=1)
    confirmed_rid = engine.reserve(SKU, "alice").id
    lost_rid = engine.reserve(SKU, "bob").id
    with api.client() as http:
        ran = assert_error(checkout(http, api, "alice", confirmed_rid), 503, "PAYMENT_PENDING")
        never_ran = assert_error(checkout(http, api, "bob", lost_rid), 503, "PAYMENT_PENDING")
    # The body names the order, so the shopper (or the storefront) can look it up.
    assert ran["order"]["status"] == never_ran["order"]["status"] == "PENDING"
    assert engine.get_order(ran["order"]["id"]).status == "CONFIRMED"
    assert engine.get_order(never_ran["order"]["id"]).status == "PENDING"
    for body in (ran, never_ran):
        payment = payment_of(redis_url_of(api), body["order"]["id"])
        assert payment is not None
        assert payment.status == PaymentStatus.AUTHORIZED  # not voided blindly: one of them is confirmed

    # Settlement captures the confirmed one and leaves the other while its hold may still be paid for.
    assert [(s.order_id, s.action) for s in settle(redis_url_of(api))] == [(ran["order"]["id"], "capture")]
    assert sorted(unsettled(redis_url_of(api))) == [never_ran["order"]["id"]]


def test_a_checkout_repeated_with_its_idempotency_key_after_an_unanswered_confirm_finishes_it(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine, redis_url: str
) -> None:
    losing = LosingConfirms.from_url(redis_url)
    losing.plan.extend(["before", None, "after"])
    api = start_server(engine=losing)
    load_sale(total=2, per_user_limit=1)
    with api.client() as http:
        for user in ("alice", "bob"):
            rid = reserve(http, api, user).json()["id"]
            key = {"Idempotency-Key": f"pay-{user}"}
            first = assert_error(checkout(http, api, user, rid, **key), 503, "PAYMENT_PENDING")
            again = checkout(http, api, user, rid, **key)
            assert again.status_code == 201, again.text
            assert again.json()["id"] == first["order"]["id"]
            assert again.json()["status"] == "CONFIRMED"
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["authorized"], counts["captured"]) == (2, 2)


# -- cancelling a confirmed order --------------------------------------------------------------------------
def test_a_refund_that_fails_when_an_order_is_cancelled_is_made_by_settlement(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = SimulatedGateway()
    api = start_server(gateway)
    load_sale()
    with api.client() as http:
        rid = reserve(http, api, "alice").json()["id"]
        order_id = checkout(http, api, "alice", rid).json()["id"]
        gateway.failing = {"refund"}
        cancelled = http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("alice"))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    kept = payment_of(redis_url_of(api), order_id)
    assert kept is not None
    assert kept.status == PaymentStatus.CAPTURED  # a missed refund ...
    assert unsettled(redis_url_of(api)) == [order_id]  # ... that the review keeps on the list

    assert [(s.action, s.reason) for s in settle(redis_url_of(api))] == [("refund", "order_cancelled")]
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["captured"], counts["refunded"]) == (1, 1)
    assert metric(api, "flashsale_payment_settlements_total", action="refund") == 1


def test_an_admin_cancellation_refunds_too(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale()
    rid = reserve(http, api, "alice").json()["id"]
    order_id = checkout(http, api, "alice", rid).json()["id"]
    response = http.post(f"{ADMIN_ORDERS}/{order_id}/cancel", headers=api.auth("ops", admin=True))
    assert response.status_code == 200, response.text
    refunded = payment_of(redis_url_of(api), order_id)
    assert refunded is not None
    assert refunded.status == PaymentStatus.REFUNDED
    assert_payments_agree_with_orders(redis_url_of(api), engine)


def test_a_cancellation_the_gateway_cannot_review_cancels_nothing(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = SimulatedGateway()
    api = start_server(gateway)
    load_sale()
    with api.client() as http:
        rid = reserve(http, api, "alice").json()["id"]
        order_id = checkout(http, api, "alice", rid).json()["id"]
        gateway.failing = {"review"}
        refused = http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("alice"))
        assert_error(refused, 502, "PAYMENT_GATEWAY_ERROR")
        assert engine.get_order(order_id).status == "CONFIRMED"
        gateway.failing = set()
        assert http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("alice")).status_code == 200
    assert_payments_agree_with_orders(redis_url_of(api), engine)


def test_a_cancellation_refused_after_its_review_leaves_the_capture_standing(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale()
    rid = reserve(http, api, "alice").json()["id"]
    order_id = checkout(http, api, "alice", rid).json()["id"]

    async def review() -> None:  # a cancellation got as far as the review, then the order shipped
        client = AsyncEngine.from_url(redis_url_of(api))
        try:
            await SimulatedGateway(client.redis, client.keys).review(order_id)
        finally:
            await client.close()

    asyncio.run(review())
    engine.fulfil_order(order_id)
    assert unsettled(redis_url_of(api)) == [order_id]
    assert [(s.action, s.reason) for s in settle(redis_url_of(api))] == [("finalize", "order_fulfilled")]
    counts = assert_payments_agree_with_orders(redis_url_of(api), engine)
    assert (counts["captured"], counts["refunded"]) == (1, 0)
