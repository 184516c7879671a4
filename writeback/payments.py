"""The payment gateway: the interface checkout, cancellation and settlement use, and a simulated gateway.

A payment goes authorize -> (the order is confirmed in Redis) -> capture. An authorization whose order is
not confirmed after all (refused confirm, lapsed hold, cancelled while paying) is voided; a capture whose
order is cancelled is refunded. Every call is keyed by the order id, which is the idempotency key at the
gateway: asking twice never authorizes, captures, voids or refunds twice, so any call that did not answer
may simply be made again. A payment whose outcome is not final is on the gateway's unsettled list, which
the settlement pass (``writeback.settlement``) works through until payment and order agree.

A real gateway replaces ``SimulatedGateway`` by implementing ``PaymentGateway`` (the order id as its
idempotency key; the unsettled list and review marks in its adapter's own store if the gateway has none).

The simulated gateway keeps its ledger in Redis (``fs:{pN}:gw:*``, in the order's partition, so it is
shared by every API process and the worker and survives their restarts), moved by two scripts,
``lua/gateway_authorize.lua`` and ``lua/gateway_transition.lua``, so concurrent calls for one order are
atomic. Methods: CREDIT_CARD, DEBIT_CARD, PAYPAL, APPLE_PAY, GOOGLE_PAY are authorized; ``TEST_DECLINE``
is a valid method that is always declined; any other is refused before a checkout starts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

import msgspec
from flashsale.engine.keys import Keyspace, Partition
from flashsale.engine.nodes import AsyncClient
from flashsale.engine.scripts import assemble
from flashsale.writeback.clock import now_ms_async
from redis.exceptions import RedisError, ResponseError

APPROVED_METHODS = frozenset({"CREDIT_CARD", "DEBIT_CARD", "PAYPAL", "APPLE_PAY", "GOOGLE_PAY"})
DECLINING_METHOD = "TEST_DECLINE"
COUNTS = ("authorized", "declined", "captured", "voided", "refunded")


class PaymentStatus(StrEnum):
    AUTHORIZED = "AUTHORIZED"  # money held on the shopper's account, not taken yet
    DECLINED = "DECLINED"  # final
    CAPTURED = "CAPTURED"  # money taken
    VOIDED = "VOIDED"  # the authorization was released; final
    REFUNDED = "REFUNDED"  # the capture was given back; final


FINAL = frozenset({PaymentStatus.DECLINED, PaymentStatus.VOIDED, PaymentStatus.REFUNDED})


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's record of one order's payment (what ``authorize`` and every other move answer)."""

    order_id: str
    status: PaymentStatus
    amount_cents: int
    method: str
    transaction_id: str
    created_at: int  # ms, the gateway's clock
    updated_at: int
    decline_reason: str | None = None
    # ms since its order began to be cancelled (a void or refund may be due); 0 when not under review.
    review_since: int = 0

    @property
    def approved(self) -> bool:
        """Whether the money is held or taken: an order may be confirmed against this payment."""
        return self.status in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED)


class UnsettledPayments(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    count: int
    oldest_age_ms: int  # how long the oldest has not been final (0 when none)


class GatewayReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the API's /metrics shows of the gateway: its counts and, per partition, its unsettled list."""

    counts: dict[str, int]
    unsettled: list[UnsettledPayments]


class GatewayError(Exception):
    """The gateway did not answer (down, timed out). The call may or may not have taken effect; every call
    is idempotent by order id, so it can be made again."""


class PaymentRefused(Exception):
    """The payment's state does not allow the move (capture a voided authorization, void a capture, or
    no payment at all): nothing changed. ``payment`` is the payment as it is now (None: there is none)."""

    def __init__(self, order_id: str, move: str, payment: Payment | None) -> None:
        state = payment.status if payment is not None else "no payment"
        super().__init__(f"cannot {move} the payment of order {order_id}: it is {state}")
        self.order_id = order_id
        self.move = move
        self.payment = payment


class PaymentGateway(Protocol):
    def accepts(self, method: str) -> bool:
        """Whether the method is one this gateway can take (checked before any state changes)."""
        ...

    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        """Authorizes (or declines: a result, not an exception) once per order id; a repeat returns the
        first result. Listed as unsettled while AUTHORIZED."""
        ...

    async def capture(self, order_id: str) -> Payment:
        """AUTHORIZED -> CAPTURED (a repeat: the same); PaymentRefused for any other state."""
        ...

    async def void(self, order_id: str) -> Payment:
        """AUTHORIZED -> VOIDED (a repeat: the same); PaymentRefused for any other state."""
        ...

    async def refund(self, order_id: str) -> Payment:
        """CAPTURED -> REFUNDED (a repeat: the same); PaymentRefused for any other state."""
        ...

    async def review(self, order_id: str) -> Payment | None:
        """Called before an order is cancelled: lists its payment as unsettled, even a capture, until it
        is voided, refunded or finalized, so settlement gives it back if the canceller cannot. With no
        payment yet, the mark waits for the authorization. None when there is no payment."""
        ...

    async def finalize(self, order_id: str) -> Payment:
        """A capture stands (its order was not cancelled after all): off the unsettled list.
        PaymentRefused for an authorization."""
        ...

    async def status(self, order_id: str) -> Payment | None:
        """The order's payment, or None."""
        ...

    async def unsettled(self, partition: int, limit: int, offset: int = 0) -> list[str]:
        """Order ids of the partition whose payment is not final (AUTHORIZED, or CAPTURED under review),
        the longest unsettled first."""
        ...

    async def report(self) -> GatewayReport:
        """Counts and unsettled payments per partition, for metrics."""
        ...


async def give_back(gateway: PaymentGateway, order_id: str) -> Payment | None:
    """Voids the order's authorization or refunds its capture, whichever it has now (a capture that
    lands while the void is asked for is refunded). None when the order has no payment."""
    payment = await gateway.status(order_id)
    if payment is not None and payment.status == PaymentStatus.AUTHORIZED:
        try:
            return await gateway.void(order_id)
        except PaymentRefused as refused:
            payment = refused.payment
    if payment is not None and payment.status == PaymentStatus.CAPTURED:
        return await gateway.refund(order_id)
    return payment


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _payment(fields: Mapping[str, str]) -> Payment | None:
    """A ledger hash as a Payment; None for a hash holding only a review mark (no payment yet)."""
    if "status" not in fields:
        return None
    return msgspec.convert(dict(fields), Payment, strict=False)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class SimulatedGateway:
    """A gateway with its ledger in Redis. Without ``redis`` it is bound later (``bind``): the API binds
    it to its engine's connection pool at startup, the worker to its own.

    ``delay_s`` makes every authorization that slow (FLASHSALE_PAYMENT_DELAY_MS). Two knobs are for tests
    only, never production settings: ``timeouts_after_authorize`` (the next N authorizations are made,
    then answered with GatewayError, as when the gateway's answer is lost) and ``failing`` (moves,
    e.g. {"capture"}, that fail with GatewayError before doing anything)."""

    def __init__(
        self, redis: AsyncClient | None = None, keyspace: Keyspace | None = None, *, delay_s: float = 0.0
    ) -> None:
        self.delay_s = delay_s
        self.timeouts_after_authorize = 0
        self.failing: set[str] = set()
        self._redis: AsyncClient | None = None
        self._keys = keyspace or Keyspace()
        if redis is not None:
            self.bind(redis, self._keys)

    @property
    def bound(self) -> bool:
        return self._redis is not None

    def bind(self, redis: AsyncClient, keyspace: Keyspace) -> SimulatedGateway:
        """Keeps the ledger through this client (its pool, its event loop) in this key layout."""
        self._redis = redis
        self._keys = keyspace
        self._authorize_script = redis.register_script(assemble("gateway_authorize"))
        self._move_script = redis.register_script(assemble("gateway_transition"))
        return self

    def accepts(self, method: str) -> bool:
        return method in APPROVED_METHODS or method == DECLINING_METHOD

    # -- the moves ----------------------------------------------------------------------------------------
    async def authorize(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Payment:
        self._check("authorize")
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        approved = method in APPROVED_METHODS
        args = [
            order_id,
            amount_cents,
            method,
            transaction_id or f"sim_{uuid.uuid4().hex}",
            "AUTHORIZED" if approved else "DECLINED",
            "" if approved else "PAYMENT_DECLINED",
        ]
        reply = await self._run(self._authorize_script, order_id, args)
        payment = _payment(_pairs(reply))
        assert payment is not None, "the authorize script always answers a payment"
        if self.timeouts_after_authorize > 0:
            self.timeouts_after_authorize -= 1
            raise GatewayError(f"the gateway timed out after authorizing order {order_id} (test knob)")
        return payment

    async def capture(self, order_id: str) -> Payment:
        return await self._move(order_id, "capture")

    async def void(self, order_id: str) -> Payment:
        return await self._move(order_id, "void")

    async def refund(self, order_id: str) -> Payment:
        return await self._move(order_id, "refund")

    async def finalize(self, order_id: str) -> Payment:
        return await self._move(order_id, "finalize")

    async def review(self, order_id: str) -> Payment | None:
        try:
            return await self._move(order_id, "review")
        except PaymentRefused as refused:  # only "no payment yet": review refuses nothing else
            return refused.payment

    async def _move(self, order_id: str, move: str) -> Payment:
        self._check(move)
        reply = await self._run(self._move_script, order_id, [order_id, move])
        outcome = _text(reply[0])
        payment = _payment(_pairs(reply[1:])) if outcome != "none" else None
        if outcome != "ok" or payment is None:
            raise PaymentRefused(order_id, move, payment)
        return payment

    # -- reads --------------------------------------------------------------------------------------------
    async def status(self, order_id: str) -> Payment | None:
        redis, p = self._client(), self._partition(order_id)
        try:
            fields = await redis.hgetall(p.payment(order_id))
        except RedisError as error:
            raise GatewayError(f"the gateway's ledger did not answer: {error}") from error
        return _payment({_text(k): _text(v) for k, v in fields.items()})

    async def unsettled(self, partition: int, limit: int, offset: int = 0) -> list[str]:
        key = self._keys.partition(partition).payments_unsettled()
        try:
            ids = await self._client().zrange(key, offset, offset + limit - 1)
        except RedisError as error:
            raise GatewayError(f"the gateway's ledger did not answer: {error}") from error
        return [_text(order_id) for order_id in ids]

    async def report(self) -> GatewayReport:
        pipe = self._client().pipeline(transaction=False)  # on a cluster: a pipeline per node
        for p in self._keys.all():
            pipe.hgetall(p.payment_counts())
            pipe.zcard(p.payments_unsettled())
            pipe.zrange(p.payments_unsettled(), 0, 0, withscores=True)
        try:
            # TIME apart: a cluster pipeline refuses a command without a key.
            now_ms = await now_ms_async(self._client(), self._keys.partition(0).payment_counts())
            replies = await pipe.execute()
        except RedisError as error:
            raise GatewayError(f"the gateway's ledger did not answer: {error}") from error
        counts = dict.fromkeys(COUNTS, 0)
        unsettled = []
        for p in self._keys.all():
            partition_counts, count, oldest = replies[3 * p.index : 3 * p.index + 3]
            for name, value in partition_counts.items():
                counts[_text(name)] = counts.get(_text(name), 0) + int(value)
            age = max(now_ms - int(oldest[0][1]), 0) if oldest else 0
            unsettled.append(UnsettledPayments(partition=p.index, count=int(count), oldest_age_ms=age))
        return GatewayReport(counts=counts, unsettled=unsettled)

    # -- plumbing -----------------------------------------------------------------------------------------
    def _check(self, move: str) -> None:
        if move in self.failing:
            raise GatewayError(f"the gateway did not answer {move} (test knob)")

    def _client(self) -> AsyncClient:
        if self._redis is None:
            raise RuntimeError("SimulatedGateway is not bound to a Redis client (bind it first)")
        return self._redis

    def _partition(self, order_id: str) -> Partition:
        return self._keys.for_order(order_id)

    async def _run(self, script: Any, order_id: str, args: list[Any]) -> Any:
        self._client()
        p = self._partition(order_id)
        keys = [p.payment(order_id), p.payments_unsettled(), p.payment_counts()]
        try:
            return await script(keys=keys, args=args)
        except ResponseError:  # the script refused its arguments: a bug of the caller, not an outage
            raise
        except RedisError as error:
            raise GatewayError(f"the gateway's ledger did not answer: {error}") from error


__all__ = [
    "APPROVED_METHODS",
    "DECLINING_METHOD",
    "FINAL",
    "GatewayError",
    "GatewayReport",
    "Payment",
    "PaymentGateway",
    "PaymentRefused",
    "PaymentStatus",
    "SimulatedGateway",
    "UnsettledPayments",
    "give_back",
]
