"""Settlement: makes every payment agree with its order, for the payments a checkout or a cancellation
could not finish (a process stopped, Redis or the gateway did not answer).

The gateway lists the payments of a partition that are not final (``PaymentGateway.unsettled``):
authorizations, and captures under review (their order was about to be cancelled). For each, the order
decides (read from Redis through the engine):

    payment      order                          settlement
    AUTHORIZED   CONFIRMED, FULFILLED           capture
    AUTHORIZED   FAILED, CANCELLED, none        void (the order can never be confirmed)
    AUTHORIZED   PENDING                        wait: the checkout is paying; when the hold's payment grace
                                                ends the sweeper fails the order, and then it is voided
    CAPTURED     CANCELLED, FAILED              refund
    CAPTURED     FULFILLED                      finalize: a fulfilled order cannot be cancelled
    CAPTURED     CONFIRMED                      finalize once the review is ``review_wait_ms`` old (the
                                                cancellation that asked for it was refused or never came);
                                                wait until then, since it may still be on its way
    CAPTURED     none                           nothing: logged as an error for an operator, and left
                                                listed so the unsettled-payments alert shows it

Why the list cannot grow for ever: an authorization leaves it when captured or voided, and every
authorization ends one of these ways (its order is confirmed, or fails when its hold's grace ends). A
capture leaves it when made, unless under review, and a review ends with a refund or a finalize. Why a
missed refund is still found: a cancellation asks the gateway for a review *before* it cancels the order,
so whatever happens after, the capture is on the list until settlement has compared it with the order.

Each action is counted in Redis (``fs:{pN}:settlement``, for the API's metrics) and logged as
``event=payment_settled action=... order=... reason=...``. The write-behind worker runs a pass over each
partition it holds every second (``WorkerOptions.settle``, ``flashsale worker --no-settle`` to turn it off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flashsale.engine import AsyncEngine, NotFound, Order, OrderStatus
from flashsale.engine.keys import Keyspace
from flashsale.engine.nodes import AsyncClient
from flashsale.writeback.clock import now_ms_async
from flashsale.writeback.payments import Payment, PaymentGateway, PaymentRefused, PaymentStatus

log = logging.getLogger("flashsale.writeback")

ACTIONS = ("capture", "void", "refund", "finalize")


@dataclass(frozen=True, slots=True)
class Settled:
    """One thing settlement did."""

    order_id: str
    action: str  # capture | void | refund | finalize
    reason: str  # what the order was: order_confirmed, order_cancelled, order_missing, ...


class Settlement:
    def __init__(
        self,
        engine: AsyncEngine,
        gateway: PaymentGateway,
        *,
        batch: int = 200,
        max_batches: int = 50,
        review_wait_ms: int = 60_000,
    ) -> None:
        self.engine = engine
        self.gateway = gateway
        self.batch = batch
        self.max_batches = max_batches
        self.review_wait_ms = review_wait_ms

    async def settle_partition(self, partition: int) -> list[Settled]:
        """One pass over the partition's unsettled payments (up to batch × max_batches of them)."""
        # The clock of the partition's node (on a cluster TIME has no key to route it by).
        now_ms = await now_ms_async(self.engine.redis, self.engine.keys.partition(partition).settlements())
        done: list[Settled] = []
        offset = 0
        for _ in range(self.max_batches):
            order_ids = await self.gateway.unsettled(partition, self.batch, offset)
            for order_id in order_ids:
                settled, listed = await self._settle(order_id, now_ms)
                if settled is not None:
                    done.append(settled)
                if listed:
                    offset += 1  # still on the list: the next page starts after it
            if len(order_ids) < self.batch:
                break
        return done

    async def settle_all(self) -> list[Settled]:
        """A pass over every partition (tests, one-off repairs)."""
        done: list[Settled] = []
        for p in range(self.engine.config.partitions):
            done += await self.settle_partition(p)
        return done

    async def _settle(self, order_id: str, now_ms: int) -> tuple[Settled | None, bool]:
        """What was done (None: nothing), and whether the payment is still on the list."""
        payment = await self.gateway.status(order_id)
        if payment is None or payment.status not in (PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED):
            return None, False  # final meanwhile: the move that made it final took it off the list
        try:
            order: Order | None = await self.engine.get_order(order_id)
        except NotFound:
            order = None
        action = _action(payment, order, now_ms, self.review_wait_ms)
        reason = "order_missing" if order is None else f"order_{order.status.lower()}"
        if action is None:
            if payment.status == PaymentStatus.CAPTURED and order is None:
                log.error(
                    "event=payment_unsettled order=%s status=%s reason=%s hint=%r",
                    order_id, payment.status, reason,
                    "a capture under review whose order is not in Redis: look it up in PostgreSQL, refund "
                    "or finalize it by hand",
                )  # fmt: skip
            return None, True
        try:
            after: Payment = await getattr(self.gateway, action)(order_id)
        except PaymentRefused as refused:
            # Moved meanwhile (a checkout captured, a cancellation voided): the next pass looks again.
            log.info(
                "event=payment_settle_skipped order=%s action=%s error=%r", order_id, action, str(refused)
            )
            return None, True
        await self._count(order_id, action)
        log.info(
            "event=payment_settled action=%s order=%s reason=%s status=%s amount_cents=%d",
            action, order_id, reason, after.status, after.amount_cents,
        )  # fmt: skip
        # A capture under review stays listed until the review ends (refund or finalize).
        listed = after.status == PaymentStatus.CAPTURED and after.review_since > 0
        return Settled(order_id, action, reason), listed

    async def _count(self, order_id: str, action: str) -> None:
        key = self.engine.keys.for_order(order_id).settlements()
        await self.engine.redis.hincrby(key, action, 1)


def _action(payment: Payment, order: Order | None, now_ms: int, review_wait_ms: int) -> str | None:
    """What to do with a payment, given its order (None: no such order); None: nothing yet."""
    status = order.status if order is not None else None
    if payment.status == PaymentStatus.AUTHORIZED:
        if status in (OrderStatus.CONFIRMED, OrderStatus.FULFILLED):
            return "capture"
        if status == OrderStatus.PENDING:
            return None
        return "void"
    if status in (OrderStatus.CANCELLED, OrderStatus.FAILED):
        return "refund"
    if status == OrderStatus.FULFILLED:
        return "finalize"
    if status == OrderStatus.CONFIRMED and now_ms - payment.review_since >= review_wait_ms:
        return "finalize"
    return None


async def read_settlements(client: AsyncClient, keyspace: Keyspace) -> dict[str, int]:
    """What settlement did, summed over the partitions: {capture, void, refund, finalize: count}."""
    pipe = client.pipeline(transaction=False)
    for p in keyspace.all():
        pipe.hgetall(p.settlements())
    totals = dict.fromkeys(ACTIONS, 0)
    replies: list[Any] = await pipe.execute()
    for counts in replies:
        for action, value in counts.items():
            name = action.decode() if isinstance(action, bytes) else str(action)
            totals[name] = totals.get(name, 0) + int(value)
    return totals


__all__ = ["ACTIONS", "Settled", "Settlement", "read_settlements"]
