"""Issue 12's test: Redis lost between the payment's approval and the order's confirm, under concurrent
checkouts through the real API. Once Redis is back, the holds whose confirm never ran have ended and a
settlement pass has run, every approved payment belongs to exactly one CONFIRMED order (and is captured)
or has been voided or refunded, and authorizations = captures + voids.

Two ways to lose Redis: a connection error injected around the engine's confirm (before the command is
sent, or after it ran with its reply lost: both, deterministically), and the Redis server itself frozen
(SIGSTOP) right after an authorization, with the API's Redis client timing out meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from flashsale.engine import AsyncEngine, Engine, EngineConfig, Sale, SaleSettings
from flashsale.writeback.payments import Payment, SimulatedGateway
from redis.backoff import NoBackoff
from redis.retry import Retry

from flashsale.launcher import RedisServer
from tests.api.conftest import SKU, ApiServer
from tests.api.test_payments import LosingConfirms, assert_payments_agree_with_orders, settle
from tests.api.test_reservations import V1


def checkout_all(api: ApiServer, reservations: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """Every user pays for their reservation, all at once."""

    async def run() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession(api.url) as session:

            async def pay(user: str, rid: str) -> tuple[int, dict[str, Any]]:
                body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
                async with session.post(
                    f"{V1}/orders/checkout", json=body, headers=api.auth(user)
                ) as response:
                    return response.status, await response.json()

            return await asyncio.gather(*(pay(user, rid) for user, rid in reservations.items()))

    return asyncio.run(run())


def end_lapsed_holds(engine: Engine, timeout_s: float = 20.0) -> None:
    """The sweeper's work, until no unit is held any more (every hold here lapses within seconds)."""
    deadline = time.monotonic() + timeout_s
    while engine.get_sale(SKU).reserved > 0:
        assert time.monotonic() < deadline, "holds did not lapse"
        engine.expire_all()
        time.sleep(0.1)


def test_a_connection_lost_around_the_confirm_of_concurrent_checkouts_leaves_no_payment_unsettled(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine, redis_url: str
) -> None:
    losing = LosingConfirms.from_url(redis_url, EngineConfig(payment_grace_ms=500))
    # Of every three confirms: one goes through, one never reaches Redis, one runs and loses its reply.
    losing.plan.extend([None, "before", "after"] * 20)
    api = start_server(engine=losing)
    load_sale(total=60, per_user_limit=1, reservation_ttl_ms=1_500)
    reservations = {f"shopper-{i}": engine.reserve(SKU, f"shopper-{i}").id for i in range(60)}

    answers = checkout_all(api, reservations)

    outcomes = Counter((status, body.get("error")) for status, body in answers)
    assert outcomes == {(201, None): 20, (503, "PAYMENT_PENDING"): 40}, answers
    assert losing.lost == {"before": 20, "after": 20}

    # Right after: settlement captures the 20 whose confirm ran, and voids nothing yet: the other 20
    # orders are still PENDING and could still be confirmed (a repeat with the Idempotency-Key would).
    first = settle(redis_url)
    assert Counter(s.action for s in first) == {"capture": 20}
    # Their holds end (payment grace and deadline passed, the sweeper's turn); then they are voided.
    end_lapsed_holds(engine)
    second = settle(redis_url)
    assert Counter((s.action, s.reason) for s in second) == {("void", "order_failed"): 20}

    counts = assert_payments_agree_with_orders(redis_url, engine)
    assert (counts["authorized"], counts["captured"], counts["voided"]) == (60, 40, 20)
    sale = engine.get_sale(SKU)
    assert (sale.sold, sale.reserved, sale.available) == (40, 0, 20)


class PausesRedisAfterAuthorizing(SimulatedGateway):
    """Freezes the Redis server (SIGSTOP) right after the first authorization, for ``pause_s``."""

    def __init__(self, pid: int, pause_s: float) -> None:
        super().__init__()
        self.pid = pid
        self.pause_s = pause_s
        self.paused = threading.Event()
        self.resumed = threading.Event()

    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        payment = await super().authorize(
            order_id=order_id, amount_cents=amount_cents, method=method, transaction_id=transaction_id
        )
        if not self.paused.is_set():
            self.paused.set()
            os.kill(self.pid, signal.SIGSTOP)
            threading.Timer(self.pause_s, self.resume).start()
        return payment

    def resume(self) -> None:
        if not self.resumed.is_set():
            os.kill(self.pid, signal.SIGCONT)
            self.resumed.set()


def engine_with_timeout(url: str, timeout_s: float) -> AsyncEngine:
    """The API's engine, as AsyncEngine.from_url builds it, but giving up on a silent Redis."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=10,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return AsyncEngine(aioredis.Redis(connection_pool=pool), EngineConfig(payment_grace_ms=500))


def test_redis_frozen_between_an_approval_and_its_confirm_under_concurrent_checkouts_settles_every_payment(
    start_server: Callable[..., ApiServer],
) -> None:
    with RedisServer() as server:
        assert server.process is not None
        gateway = PausesRedisAfterAuthorizing(server.process.pid, pause_s=1.5)
        try:
            engine = Engine.from_url(server.url)
            engine.load_scripts()
            now = int(time.time() * 1000)
            engine.load_sale(
                SaleSettings(
                    sku=SKU, name="Flash sneaker", total=30, per_user_limit=1, flash_price_cents=4_999,
                    starts_at=now - 60_000, ends_at=now + 3_600_000, reservation_ttl_ms=3_000,
                )
            )  # fmt: skip
            api_engine = engine_with_timeout(server.url, 0.5)
            api = start_server(gateway, engine=api_engine, redis_url=server.url)
            reservations = {f"shopper-{i}": engine.reserve(SKU, f"shopper-{i}").id for i in range(30)}

            answers = checkout_all(api, reservations)

            assert gateway.paused.is_set()
            assert gateway.resumed.wait(10)
            outcomes = Counter((status, body.get("error")) for status, body in answers)
            # The checkout that froze Redis had its payment approved and its confirm unanswered.
            assert outcomes[(503, "PAYMENT_PENDING")] >= 1, outcomes
            assert set(outcomes) <= {
                (201, None),
                (503, "PAYMENT_PENDING"),  # authorized, confirm unanswered
                (502, "PAYMENT_GATEWAY_ERROR"),  # the gateway (its ledger is in this Redis) unanswered
                (503, "SERVICE_UNAVAILABLE"),  # begin_checkout unanswered
                (409, "INVALID_STATE"),
                (410, "RESERVATION_EXPIRED"),
            }, outcomes

            end_lapsed_holds(engine)
            settled = settle(server.url)
            assert settled, "the frozen checkout's payment needed settling"
            counts = assert_payments_agree_with_orders(server.url, engine)
            assert counts["authorized"] >= 1
            engine.close()
        finally:
            gateway.resume()
