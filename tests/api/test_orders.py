"""Checkout through the simulated gateway (authorize -> confirm -> capture), orders and their cancellation,
over real HTTP and Redis. The gateway's ledger is in Redis: the tests count its moves there."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import msgspec
import redis
from flashsale.engine import Engine, Sale
from flashsale.engine.keys import Keyspace
from flashsale.writeback.payments import COUNTS, DECLINING_METHOD, Payment, PaymentStatus, SimulatedGateway

from tests.api.conftest import SKU, ApiServer
from tests.api.test_reservations import V1, assert_error, reserve


def checkout(
    http: httpx.Client,
    api: ApiServer,
    user: str,
    reservation_id: str,
    method: str = "CREDIT_CARD",
    **extra: Any,
) -> httpx.Response:
    body = {"reservationId": reservation_id, "paymentMethod": method}
    return http.post(f"{V1}/orders/checkout", json=body, headers={**api.auth(user), **extra})


def gateway_counts(redis_url: str) -> dict[str, int]:
    """The simulated gateway's counts of authorizations, declines, captures, voids and refunds."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        totals = dict.fromkeys(COUNTS, 0)
        for p in Keyspace().all():
            for name, value in client.hgetall(p.payment_counts()).items():
                totals[name] += int(value)
        return totals
    finally:
        client.close()


def payment_of(redis_url: str, order_id: str) -> Payment | None:
    """The simulated gateway's record of an order's payment."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        fields = client.hgetall(Keyspace().for_order(order_id).payment(order_id))
    finally:
        client.close()
    return msgspec.convert(fields, Payment, strict=False) if "status" in fields else None


def unsettled(redis_url: str) -> list[str]:
    """Every order id on the gateway's unsettled list."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [oid for p in Keyspace().all() for oid in client.zrange(p.payments_unsettled(), 0, -1)]
    finally:
        client.close()


def moves(api: ApiServer) -> dict[str, int]:
    return gateway_counts(str(api.settings.redis_url))


def charges(api: ApiServer) -> int:
    """Authorizations made: one per order paid for, whatever happened to it after."""
    return moves(api)["authorized"]


def test_checkout_confirms_the_order_and_moves_the_units_to_sold(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=3, flash_price_cents=4_999, per_user_limit=2)
    rid = reserve(http, api, "alice", quantity=2).json()["id"]
    response = checkout(http, api, "alice", rid)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "CONFIRMED"
    assert order["reservationId"] == rid
    assert order["userId"] == "alice"
    assert (order["unitPrice"], order["totalPrice"]) == ("49.99", "99.98")
    assert order["transactionId"].startswith("sim_")
    assert http.get(f"{V1}/orders/{order['id']}", headers=api.auth("alice")).json() == order
    assert engine.get_reservation(rid).status == "CONFIRMED"
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved, sale.sold) == (1, 0, 2)
    assert moves(api) == {**moves(api), "authorized": 1, "captured": 1, "voided": 0}
    payment = payment_of(str(api.settings.redis_url), order["id"])
    assert payment is not None
    assert (payment.status, payment.amount_cents) == (PaymentStatus.CAPTURED, 9_998)
    assert payment.transaction_id == order["transactionId"]
    assert unsettled(str(api.settings.redis_url)) == []
    # The reservation is paid for: paying again is a state error, not a second charge.
    assert_error(checkout(http, api, "alice", rid), 409, "INVALID_STATE")
    assert charges(api) == 1


def test_a_declined_payment_answers_402_with_the_failed_order_and_the_hold_can_be_retried(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=1)
    rid = reserve(http, api, "alice").json()["id"]
    declined = assert_error(checkout(http, api, "alice", rid, DECLINING_METHOD), 402, "PAYMENT_DECLINED")
    assert declined["order"]["status"] == "FAILED"
    assert declined["order"]["failureReason"] == "PAYMENT_DECLINED"
    assert engine.get_order(declined["order"]["id"]).status == "FAILED"
    reservation = engine.get_reservation(rid)
    assert reservation.status == "RESERVED"
    assert reservation.order_id is None
    assert engine.get_sale(SKU).reserved == 1

    retried = checkout(http, api, "alice", rid, "PAYPAL")
    assert retried.status_code == 201
    assert retried.json()["status"] == "CONFIRMED"
    assert engine.get_sale(SKU).sold == 1
    assert (moves(api)["declined"], moves(api)["authorized"], moves(api)["captured"]) == (1, 1, 1)


def test_an_unknown_payment_method_is_refused_before_anything_changes(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale()
    rid = reserve(http, api, "alice").json()["id"]
    assert_error(checkout(http, api, "alice", rid, "MONOPOLY_MONEY"), 400, "VALIDATION_ERROR")
    assert engine.get_reservation(rid).order_id is None
    assert charges(api) == 0


def test_two_concurrent_checkouts_of_one_reservation_charge_once_and_the_second_gets_409(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    # A slow gateway keeps the first payment in flight while the others arrive.
    api = start_server(SimulatedGateway(delay_s=0.3))
    load_sale(total=1)
    rid = engine.reserve(SKU, "alice").id

    async def race() -> list[tuple[int, dict[str, Any]]]:
        body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
        async with aiohttp.ClientSession(api.url, headers=api.auth("alice")) as session:

            async def one() -> tuple[int, dict[str, Any]]:
                async with session.post(f"{V1}/orders/checkout", json=body) as response:
                    return response.status, await response.json()

            return await asyncio.gather(*(one() for _ in range(5)))

    answers = asyncio.run(race())
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201, 409, 409, 409, 409], answers
    assert {body["error"] for status, body in answers if status == 409} == {"CHECKOUT_IN_PROGRESS"}
    assert (moves(api)["authorized"], moves(api)["captured"]) == (1, 1)
    sale = engine.get_sale(SKU)
    assert (sale.reserved, sale.sold) == (0, 1)


def test_a_checkout_repeated_with_the_same_idempotency_key_returns_the_same_order_without_a_second_charge(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale()
    rid = reserve(http, api, "alice").json()["id"]
    first = checkout(http, api, "alice", rid, **{"Idempotency-Key": "pay-1"})
    repeat = checkout(http, api, "alice", rid, **{"Idempotency-Key": "pay-1"})
    assert first.status_code == repeat.status_code == 201
    assert repeat.json()["id"] == first.json()["id"]
    assert repeat.json()["status"] == "CONFIRMED"
    assert charges(api) == 1
    assert engine.get_sale(SKU).sold == 1


def test_an_order_is_private_to_its_user_and_cancelling_it_returns_the_units(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=1)
    rid = reserve(http, api, "alice").json()["id"]
    order_id = checkout(http, api, "alice", rid).json()["id"]

    assert_error(http.get(f"{V1}/orders/{order_id}", headers=api.auth("mallory")), 403, "FORBIDDEN")
    assert_error(http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("mallory")), 403, "FORBIDDEN")
    assert_error(checkout(http, api, "mallory", rid), 403, "FORBIDDEN")
    assert_error(http.get(f"{V1}/orders/ord_0_missing", headers=api.auth("alice")), 404, "NOT_FOUND")
    assert engine.get_order(order_id).status == "CONFIRMED"

    cancelled = http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("alice"))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.sold) == (1, 0)
    again = http.post(f"{V1}/orders/{order_id}/cancel", headers=api.auth("alice"))
    assert_error(again, 409, "INVALID_STATE")
    # The shopper got the money back, once.
    refunded = payment_of(str(api.settings.redis_url), order_id)
    assert refunded is not None
    assert refunded.status == PaymentStatus.REFUNDED
    assert (moves(api)["captured"], moves(api)["refunded"]) == (1, 1)
    assert unsettled(str(api.settings.redis_url)) == []
    # The unit and the user's limit are free again.
    assert reserve(http, api, "alice").status_code == 201


class PausingGateway(SimulatedGateway):
    """Says (across threads) when an authorization has started, then takes its time."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.5)
        self.charging = threading.Event()

    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        self.charging.set()
        return await super().authorize(
            order_id=order_id, amount_cents=amount_cents, method=method, transaction_id=transaction_id
        )


def test_releasing_a_reservation_while_its_payment_is_in_flight_is_refused(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = PausingGateway()
    api = start_server(gateway)
    load_sale()
    rid = engine.reserve(SKU, "alice").id

    async def pay_and_release() -> tuple[int, dict[str, Any], int]:
        async with aiohttp.ClientSession(api.url, headers=api.auth("alice")) as session:
            body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
            paying = asyncio.ensure_future(session.post(f"{V1}/orders/checkout", json=body))
            assert await asyncio.to_thread(gateway.charging.wait, 10)
            async with session.delete(f"{V1}/reservations/{rid}") as response:
                answer = response.status, await response.json()
            paid = await paying
            paid.release()
            return (*answer, paid.status)

    status, body, paid = asyncio.run(pay_and_release())
    assert (status, body["error"]) == (409, "CHECKOUT_IN_PROGRESS")
    assert paid == 201
    assert engine.get_reservation(rid).status == "CONFIRMED"


class HeldGateway(SimulatedGateway):
    """Authorizes, but only when the test lets the authorization finish."""

    def __init__(self) -> None:
        super().__init__()
        self.charging = threading.Event()
        self.proceed = threading.Event()

    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        self.charging.set()
        await asyncio.to_thread(self.proceed.wait, 20)
        return await super().authorize(
            order_id=order_id, amount_cents=amount_cents, method=method, transaction_id=transaction_id
        )


def test_a_payment_that_outlives_its_hold_is_voided_and_the_order_stays_failed(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    gateway = HeldGateway()
    api = start_server(gateway, payment_grace_ms=0)  # the hold is not extended while paying
    load_sale(reservation_ttl_ms=1000)
    rid = engine.reserve(SKU, "alice").id

    async def pay_too_late() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(api.url, headers=api.auth("alice")) as session:
            body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
            paying = asyncio.ensure_future(session.post(f"{V1}/orders/checkout", json=body))
            assert await asyncio.to_thread(gateway.charging.wait, 10)
            await asyncio.sleep(1.1)
            assert await asyncio.to_thread(engine.expire_all) == 1  # the sweeper's turn
            gateway.proceed.set()
            async with await paying as response:
                return response.status, await response.json()

    status, body = asyncio.run(pay_too_late())
    assert (status, body["error"]) == (409, "INVALID_STATE")
    reservation = engine.get_reservation(rid)
    assert reservation.status == "EXPIRED"
    assert reservation.order_id is not None
    assert engine.get_order(reservation.order_id).status == "FAILED"
    # The authorization was released, never captured.
    voided = payment_of(str(api.settings.redis_url), reservation.order_id)
    assert voided is not None
    assert voided.status == PaymentStatus.VOIDED
    assert moves(api) == {**moves(api), "authorized": 1, "captured": 0, "voided": 1}
    assert unsettled(str(api.settings.redis_url)) == []
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved, sale.sold) == (10, 0, 0)


def test_concurrent_repeats_with_one_idempotency_key_share_one_order_and_one_charge(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    api = start_server(SimulatedGateway(delay_s=0.3))
    load_sale()
    rid = engine.reserve(SKU, "alice").id

    async def repeat() -> list[tuple[int, dict[str, Any]]]:
        headers = {**api.auth("alice"), "Idempotency-Key": "pay-once"}
        body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
        async with aiohttp.ClientSession(api.url, headers=headers) as session:

            async def one() -> tuple[int, dict[str, Any]]:
                async with session.post(f"{V1}/orders/checkout", json=body) as response:
                    return response.status, await response.json()

            return await asyncio.gather(*(one() for _ in range(3)))

    answers = asyncio.run(repeat())
    assert [status for status, _ in answers] == [201, 201, 201], answers
    assert len({body["id"] for _, body in answers}) == 1
    assert {body["status"] for _, body in answers} == {"CONFIRMED"}
    assert (moves(api)["authorized"], moves(api)["captured"]) == (1, 1)
    assert engine.get_sale(SKU).sold == 1
