"""The payment gateway behind checkout: a small interface, and a simulated gateway for local use and tests.

A real gateway replaces ``SimulatedGateway`` by implementing ``PaymentGateway``. ``charge`` is keyed by
the order id (its idempotency key at a real gateway): asking twice for one order never charges twice.

Simulated methods: CREDIT_CARD, DEBIT_CARD, PAYPAL, APPLE_PAY, GOOGLE_PAY are approved;
``TEST_DECLINE`` is a valid method that is always declined (to exercise the failure path); any other
method is refused before a checkout starts. ``delay_s`` makes every charge that slow.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

import msgspec

APPROVED_METHODS = frozenset({"CREDIT_CARD", "DEBIT_CARD", "PAYPAL", "APPLE_PAY", "GOOGLE_PAY"})
DECLINING_METHOD = "TEST_DECLINE"


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    approved: bool
    transaction_id: str
    amount_cents: int
    decline_reason: str | None = None


class PaymentGateway(Protocol):
    def accepts(self, method: str) -> bool:
        """Whether the method is one this gateway can charge (checked before any state changes)."""
        ...

    async def charge(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Charge:
        """Charges once per order id; a repeat for the same order returns the first result."""
        ...

    async def refund(self, charge: Charge) -> None:
        """Gives an approved charge back (the order could not be confirmed after all)."""
        ...


class SimulatedGateway:
    """In-memory gateway: remembers each order's charge, counts them, and can be slow."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.charges: dict[str, Charge] = {}
        self.refunds: list[Charge] = []
        self._in_flight: dict[str, asyncio.Future[Charge]] = {}

    def accepts(self, method: str) -> bool:
        return method in APPROVED_METHODS or method == DECLINING_METHOD

    async def charge(
        self, *, order_id: str, amount_cents: int, method: str, transaction_id: str | None
    ) -> Charge:
        if order_id in self.charges:
            return self.charges[order_id]
        if order_id in self._in_flight:
            return await asyncio.shield(self._in_flight[order_id])
        future: asyncio.Future[Charge] = asyncio.get_running_loop().create_future()
        self._in_flight[order_id] = future
        try:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            approved = method in APPROVED_METHODS
            result = Charge(
                order_id=order_id,
                approved=approved,
                transaction_id=transaction_id or f"sim_{uuid.uuid4().hex}",
                amount_cents=amount_cents,
                decline_reason=None if approved else "PAYMENT_DECLINED",
            )
            self.charges[order_id] = result
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved: perhaps nobody else is waiting
            raise
        finally:
            del self._in_flight[order_id]

    async def refund(self, charge: Charge) -> None:
        self.refunds.append(charge)
