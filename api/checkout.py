"""Checkout and cancellation, with the payment gateway (writeback.payments) keyed by the order id:

    begin_checkout (order PENDING) -> authorize -> confirm (CONFIRMED) -> capture

- Declined: fail_checkout (402, the FAILED order in the body); the hold stays, the shopper may pay again.
- The gateway does not answer authorize (twice; the call is idempotent, so a retry cannot authorize
  twice): an authorization may exist, so the order is failed (fail_checkout) and can never be confirmed,
  and settlement voids whatever was authorized for it (502 PAYMENT_GATEWAY_ERROR).
- confirm refused (the hold's payment grace ran out, the order was cancelled meanwhile): void, then the
  refusal.
- confirm without an answer (Redis unreachable or timed out: it may or may not have run): nothing is
  voided, since the order may be CONFIRMED; settlement captures or voids once it can tell
  (503 PAYMENT_PENDING with the order, whose outcome GET /orders/{id} shows).
- capture fails: the order is CONFIRMED and the answer is 201; settlement captures later.

begin_checkout marks the reservation as being paid for, so a second checkout of it while one is in
flight is refused (409 CHECKOUT_IN_PROGRESS) before any gateway call. A repeat with the same
Idempotency-Key gets the same order and goes on from where the first left it.

Cancelling an order (PENDING or CONFIRMED) first asks the gateway to review its payment, so settlement
looks at it even if this process stops half way, then cancels in the engine, then voids the
authorization or refunds the capture.
"""

from __future__ import annotations

import asyncio
import logging

from flashsale.api import schemas
from flashsale.api.errors import ApiError, validation_error
from flashsale.api.metrics import ApiMetrics
from flashsale.api.schemas import CheckoutRequest
from flashsale.engine import AsyncEngine, FlashSaleError, Forbidden, InvalidState, Order, OrderStatus
from flashsale.writeback.payments import GatewayError, Payment, PaymentGateway, PaymentRefused, give_back
from redis.exceptions import RedisError

log = logging.getLogger("flashsale.api")

# Tries of one authorization before the order is failed: each repeat is answered with the first result.
AUTHORIZE_TRIES = 2


def _declined(order: Order) -> ApiError:
    return ApiError(
        402,
        "PAYMENT_DECLINED",
        f"the payment was declined ({order.failure_reason}); the reservation is held until it expires",
        order=schemas.order(order),
    )


def _finished(order: Order) -> Order:
    if order.status == OrderStatus.FAILED:
        raise _declined(order)
    return order


class Checkout:
    def __init__(self, engine: AsyncEngine, gateway: PaymentGateway, metrics: ApiMetrics) -> None:
        self.engine = engine
        self.gateway = gateway
        self.metrics = metrics

    async def __call__(self, user: str, request: CheckoutRequest, idempotency_key: str | None) -> Order:
        if not self.gateway.accepts(request.payment_method):
            self.metrics.count_checkout("VALIDATION_ERROR")
            raise validation_error(f"payment method {request.payment_method!r} is not accepted")
        # Shielded: a client that hangs up mid-payment must not leave an authorization half way.
        try:
            order = await asyncio.shield(self._pay(user, request, idempotency_key))
        except FlashSaleError as error:
            self.metrics.count_checkout(error.code)
            raise
        except ApiError as error:
            self.metrics.count_checkout("declined" if error.status == 402 else error.code)
            raise
        self.metrics.count_checkout("confirmed")
        return order

    async def _pay(self, user: str, request: CheckoutRequest, idempotency_key: str | None) -> Order:
        pending = await self.engine.begin_checkout(
            request.reservation_id, user, request.payment_method, idempotency_key=idempotency_key
        )
        if idempotency_key is not None:
            # A repeat gets the first answer (the order as it was when PENDING): report how it ended.
            current = await self.engine.get_order(pending.id)
            if current.status == OrderStatus.CONFIRMED:
                await self._capture(current)  # in case the first attempt did not get to it
            if current.status != OrderStatus.PENDING:
                return _finished(current)
        payment = await self._authorize(pending, request, user)
        if not payment.approved:
            try:
                reason = payment.decline_reason or f"PAYMENT_{payment.status}"
                failed = await self.engine.fail_checkout(pending.id, user, reason)
            except InvalidState:  # a repeat with the same key ended it first
                failed = await self.engine.get_order(pending.id)
            log.info("event=payment_declined order=%s user=%s sku=%s", pending.id, user, pending.sku)
            return _finished(failed)
        try:
            # Keyed by the order: a repeat with the same Idempotency-Key confirms once and both get the order.
            order = await self.engine.confirm(
                pending.id, user, payment.transaction_id, idempotency_key=f"charge-{pending.id}"
            )
        except FlashSaleError as refusal:
            # E.g. the payment took longer than the grace period and the hold ended: release the money.
            log.warning("event=confirm_refused order=%s user=%s code=%s", pending.id, user, refusal.code)
            await self._give_back(pending.id, "confirm_refused")
            raise
        except RedisError as error:
            # The confirm may or may not have run: voiding could take the money of a CONFIRMED order back.
            log.error(
                "event=confirm_unknown order=%s user=%s sku=%s error=%r hint=%r",
                pending.id, user, pending.sku, str(error), "settlement captures or voids it",
            )  # fmt: skip
            message = (
                "the payment was authorized but the order could not be confirmed just now; it will be "
                "settled (confirmed and charged, or the authorization released): check the order shortly"
            )
            raise ApiError(
                503, "PAYMENT_PENDING", message, headers={"Retry-After": "2"}, order=schemas.order(pending)
            ) from None
        await self._capture(order)
        return order

    async def _authorize(self, pending: Order, request: CheckoutRequest, user: str) -> Payment:
        for attempt in range(1, AUTHORIZE_TRIES + 1):
            try:
                return await self.gateway.authorize(
                    order_id=pending.id,
                    amount_cents=pending.total_cents,
                    method=request.payment_method,
                    transaction_id=request.transaction_id,
                )
            except GatewayError as error:
                log.warning(
                    "event=payment_unanswered order=%s user=%s attempt=%d error=%r",
                    pending.id, user, attempt, str(error),
                )  # fmt: skip
            except Exception as error:  # a bug in the adapter: the same, with its traceback
                log.error("event=payment_error order=%s user=%s", pending.id, user, exc_info=error)
                break
        # The gateway may have authorized without our hearing of it. A FAILED order can never be
        # confirmed, so nothing can be captured for it, and settlement voids any authorization it has.
        try:
            await self.engine.fail_checkout(pending.id, user, "PAYMENT_ERROR")
        except InvalidState:
            pass  # a repeat or a cancellation ended it first
        except RedisError as error:  # the hold's payment grace ends it (FAILED) instead
            log.warning("event=fail_checkout_unanswered order=%s error=%r", pending.id, str(error))
        message = (
            "the payment gateway did not answer; the order failed and nothing will be charged, try again"
        )
        raise ApiError(502, "PAYMENT_GATEWAY_ERROR", message)

    async def _capture(self, order: Order) -> None:
        try:
            await self.gateway.capture(order.id)
        except (GatewayError, PaymentRefused, RedisError) as error:
            # The order is CONFIRMED: settlement captures the authorization (or finds it given back).
            log.warning("event=capture_deferred order=%s user=%s error=%r", order.id, order.user, str(error))

    async def _give_back(self, order_id: str, reason: str) -> None:
        try:
            payment = await give_back(self.gateway, order_id)
        except (GatewayError, PaymentRefused, RedisError) as error:
            log.warning("event=give_back_deferred order=%s reason=%s error=%r", order_id, reason, str(error))
            return
        if payment is not None:
            log.info(
                "event=payment_given_back order=%s reason=%s status=%s", order_id, reason, payment.status
            )

    # -- cancellation -------------------------------------------------------------------------------------
    async def cancel(self, order_id: str, user: str, *, admin: bool = False) -> Order:
        """Cancels a PENDING or CONFIRMED order (the engine), voiding or refunding its payment."""
        order = await self.engine.get_order(order_id)
        if order.user != user and not admin:
            raise Forbidden(f"order {order_id} belongs to another user")
        if order.status in (OrderStatus.PENDING, OrderStatus.CONFIRMED):
            try:
                # Before the cancel: if this process stops after it, settlement still gives the money back.
                await self.gateway.review(order_id)
            except GatewayError as error:
                log.warning("event=payment_review_unanswered order=%s error=%r", order_id, str(error))
                message = "the payment gateway did not answer; the order was not cancelled, try again"
                raise ApiError(502, "PAYMENT_GATEWAY_ERROR", message) from None
        cancelled = await self.engine.cancel_order(order_id, user, admin=admin)
        await self._give_back(order_id, f"order_cancelled_from_{order.status.lower()}")
        return cancelled
