"""Checkout's edges in the engine: a shopper cancelling while paying, and a payment that arrives too late."""

from __future__ import annotations

import time

import pytest
from engine_checks import check_invariants, event_types
from flashsale.engine import (
    Engine,
    InvalidState,
    OrderStatus,
    ReservationExpired,
    ReservationStatus,
    SaleSettings,
)


def _now_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _sleep_past(deadline_ms: int, engine: Engine) -> None:
    time.sleep(max(0, deadline_ms - _now_ms(engine) + 20) / 1000)


def test_a_shopper_who_cancels_while_paying_gets_the_units_back_on_sale_and_the_limit_freed(
    engine: Engine,
) -> None:
    engine.load_sale(SaleSettings(sku="PAY-1", total=2, per_user_limit=1, flash_price_cents=100))
    hold = engine.reserve("PAY-1", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")

    cancelled = engine.cancel_order(order.id, "alice")

    assert cancelled.status == OrderStatus.CANCELLED
    assert engine.get_reservation(hold.id).status == ReservationStatus.CANCELLED
    sale = engine.get_sale("PAY-1")
    assert (sale.available, sale.reserved, sale.sold) == (2, 0, 0)
    assert engine.user_counts("PAY-1", "alice").held == 0
    with pytest.raises(InvalidState):  # the payment that was in flight can no longer confirm
        engine.confirm(order.id, "alice", "tx-late")
    with pytest.raises(InvalidState):
        engine.cancel_order(order.id, "alice")
    assert engine.reserve("PAY-1", "alice").status == ReservationStatus.RESERVED  # the limit is free again
    assert event_types(engine)["checkout_cancelled"] == 1
    check_invariants(engine)


def test_a_payment_that_arrives_after_its_grace_confirms_nothing_even_without_a_sweeper(
    graceless_engine: Engine,
) -> None:
    """Issue 12, defect 2: confirm checked no deadline, so with the sweeper down a late payment sold."""
    engine = graceless_engine
    engine.load_sale(SaleSettings(sku="PAY-2", total=1, reservation_ttl_ms=1000))
    hold = engine.reserve("PAY-2", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    _sleep_past(hold.expires_at, engine)  # no sweeper runs in this test

    with pytest.raises(ReservationExpired):
        engine.confirm(order.id, "alice", "tx-late")

    assert engine.get_order(order.id).status == OrderStatus.FAILED
    assert engine.get_reservation(hold.id).status == ReservationStatus.EXPIRED
    sale = engine.get_sale("PAY-2")
    assert (sale.available, sale.reserved, sale.sold) == (1, 0, 0)
    check_invariants(engine)


def test_cancelling_a_payment_whose_grace_ran_out_ends_the_hold_as_expired(graceless_engine: Engine) -> None:
    engine = graceless_engine
    engine.load_sale(SaleSettings(sku="PAY-3", total=1, reservation_ttl_ms=1000))
    hold = engine.reserve("PAY-3", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    _sleep_past(hold.expires_at, engine)

    with pytest.raises(InvalidState):
        engine.cancel_order(order.id, "alice")

    assert engine.get_order(order.id).status == OrderStatus.FAILED
    assert engine.get_reservation(hold.id).status == ReservationStatus.EXPIRED
    assert engine.get_sale("PAY-3").available == 1
    check_invariants(engine)
