"""Checkout: the engine's begin_checkout (order PENDING) -> the payment gateway -> confirm or fail.

The reservation is marked as being paid for by begin_checkout, so a second checkout of it while this
one is in flight is refused by the engine (409 CHECKOUT_IN_PROGRESS) before any charge. A declined
payment fails the order (402, the order in the body) and the reservation is RESERVED again until it
expires, so the user may try again. A repeat with the same Idempotency-Key gets the same order, and the
gateway is keyed by order id, so a repeat never charges twice.
"""

from __future__ import annotations

import asyncio
import logging

from flashsale.api import schemas
from flashsale.api.errors import ApiError, validation_error
from flashsale.api.metrics import ApiMetrics
from flashsale.api.payments import PaymentGateway
from flashsale.api.schemas import CheckoutRequest
from flashsale.engine import AsyncEngine, FlashSaleError, InvalidState, Order, OrderStatus

log = logging.getLogger("flashsale.api")


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
            self.metrics.checkouts.labels("VALIDATION_ERROR").inc()
            raise validation_error(f"payment method {request.payment_method!r} is not accepted")
        # Shielded: a client that hangs up mid-payment must not leave a charge without its confirm.
        try:
            order = await asyncio.shield(self._pay(user, request, idempotency_key))
        except FlashSaleError as error:
            self.metrics.checkouts.labels(error.code).inc()
            raise
        except ApiError as error:
            self.metrics.checkouts.labels("declined" if error.status == 402 else error.code).inc()
            raise
        self.metrics.checkouts.labels("confirmed").inc()
        return order

    async def _pay(self, user: str, request: CheckoutRequest, idempotency_key: str | None) -> Order:
        pending = await self.engine.begin_checkout(
            request.reservation_id, user, request.payment_method, idempotency_key=idempotency_key
        )
        if idempotency_key is not None:
            # A repeat gets the first answer (the order as it was when PENDING): report how it ended.
            current = await self.engine.get_order(pending.id)
            if current.status != OrderStatus.PENDING:
                return _finished(current)
        try:
            charge = await self.gateway.charge(
                order_id=pending.id,
                amount_cents=pending.total_cents,
                method=request.payment_method,
                transaction_id=request.transaction_id,
            )
        except Exception as error:
            log.error("event=payment_error order=%s user=%s", pending.id, user, exc_info=error)
            await self.engine.fail_checkout(pending.id, user, "PAYMENT_ERROR")
            message = "the payment gateway did not answer; the order failed, try again"
            raise ApiError(502, "PAYMENT_GATEWAY_ERROR", message) from None
        if not charge.approved:
            try:
                reason = charge.decline_reason or "PAYMENT_DECLINED"
                failed = await self.engine.fail_checkout(pending.id, user, reason)
            except InvalidState:  # a repeat with the same key ended it first
                failed = await self.engine.get_order(pending.id)
            log.info("event=payment_declined order=%s user=%s sku=%s", pending.id, user, pending.sku)
            return _finished(failed)
        try:
            # Keyed by the order: a repeat with the same Idempotency-Key confirms once and both get the order.
            return await self.engine.confirm(
                pending.id, user, charge.transaction_id, idempotency_key=f"charge-{pending.id}"
            )
        except FlashSaleError:
            # E.g. the payment took longer than the grace period and the hold expired: give the money back.
            log.warning("event=charge_refunded order=%s user=%s reason=confirm_refused", pending.id, user)
            await self.gateway.refund(charge)
            raise
