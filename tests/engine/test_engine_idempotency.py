"""A retry with the same idempotency key gets the first answer (same ids, or the same refusal) and changes
nothing; a new key is a new attempt. Covers reserve, begin_checkout and confirm."""

from __future__ import annotations

import pytest
from engine_checks import check_invariants, event_types, run_together, sku_in_partition, stream_lengths
from flashsale.engine import (
    CheckoutInProgress,
    Engine,
    InvalidState,
    Order,
    OrderStatus,
    OutOfStock,
    Reservation,
    SaleSettings,
)

pytestmark = pytest.mark.cluster


def test_a_reserve_retried_with_the_same_key_returns_the_same_reservation(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-1", total=5, per_user_limit=2))
    first = engine.reserve("IDEM-1", "alice", idempotency_key="click-1")
    lengths = stream_lengths(engine)
    again = engine.reserve("IDEM-1", "alice", idempotency_key="click-1")
    assert again == first
    assert stream_lengths(engine) == lengths  # the retry emitted nothing
    assert engine.get_sale("IDEM-1").reserved == 1
    second = engine.reserve("IDEM-1", "alice", idempotency_key="click-2")
    assert second.id != first.id
    assert engine.get_sale("IDEM-1").reserved == 2
    assert engine.user_counts("IDEM-1", "alice").held == 2
    check_invariants(engine)


def test_retries_sent_at_the_same_instant_make_one_reservation(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-2", total=5, per_user_limit=5))
    outcomes = run_together(*[lambda: engine.reserve("IDEM-2", "bob", idempotency_key="k")] * 20)
    assert all(isinstance(o, Reservation) for o in outcomes), outcomes
    assert len({o.id for o in outcomes if isinstance(o, Reservation)}) == 1
    assert engine.get_sale("IDEM-2").reserved == 1
    assert event_types(engine)["reserved"] == 1


def test_a_reserve_retry_repeats_the_first_refusal_even_after_stock_returns(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-3", total=0))
    with pytest.raises(OutOfStock) as first:
        engine.reserve("IDEM-3", "carol", idempotency_key="k")
    engine.restock("IDEM-3", 1)
    with pytest.raises(OutOfStock) as again:
        engine.reserve("IDEM-3", "carol", idempotency_key="k")
    assert again.value.message == first.value.message
    assert engine.get_sale("IDEM-3").available == 1
    fresh = engine.reserve("IDEM-3", "carol", idempotency_key="k2")  # a new key is a new attempt
    assert fresh.quantity == 1
    assert engine.get_sale("IDEM-3").available == 0
    check_invariants(engine)


def test_keys_are_per_user(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-4", total=2))
    a = engine.reserve("IDEM-4", "alice", idempotency_key="same")
    b = engine.reserve("IDEM-4", "bob", idempotency_key="same")
    assert a.id != b.id
    assert engine.get_sale("IDEM-4").reserved == 2


def test_a_checkout_retried_with_the_same_key_returns_the_same_order(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-5", total=1, flash_price_cents=250))
    hold = engine.reserve("IDEM-5", "alice")
    first = engine.begin_checkout(hold.id, "alice", "card", idempotency_key="pay-1")
    lengths = stream_lengths(engine)
    again = engine.begin_checkout(hold.id, "alice", "card", idempotency_key="pay-1")
    assert again == first
    assert again.status == OrderStatus.PENDING
    assert stream_lengths(engine) == lengths
    with pytest.raises(CheckoutInProgress):  # a new key is a new attempt, refused while paying
        engine.begin_checkout(hold.id, "alice", "card", idempotency_key="pay-2")
    check_invariants(engine)


def test_a_checkout_retry_repeats_the_first_refusal_and_a_new_key_tries_again(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-6", total=1))
    hold = engine.reserve("IDEM-6", "alice")
    paying = engine.begin_checkout(hold.id, "alice", "card")
    with pytest.raises(CheckoutInProgress):
        engine.begin_checkout(hold.id, "alice", "wallet", idempotency_key="pay-2")
    engine.fail_checkout(paying.id, "alice", "PAYMENT_DECLINED")
    # The hold can be paid for again, but the retry of the refused attempt keeps its first answer.
    with pytest.raises(CheckoutInProgress):
        engine.begin_checkout(hold.id, "alice", "wallet", idempotency_key="pay-2")
    retry = engine.begin_checkout(hold.id, "alice", "wallet", idempotency_key="pay-3")
    assert retry.id != paying.id
    assert retry.status == OrderStatus.PENDING
    assert engine.get_reservation(hold.id).order_id == retry.id
    assert event_types(engine)["checkout_started"] == 2
    check_invariants(engine)


def test_a_confirm_retried_with_the_same_key_returns_the_same_order_and_sells_once(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="IDEM-7", total=3))
    hold = engine.reserve("IDEM-7", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    outcomes = run_together(*[lambda: engine.confirm(order.id, "alice", "tx-1", idempotency_key="c1")] * 10)
    assert all(isinstance(o, Order) for o in outcomes), outcomes
    assert {o.status for o in outcomes if isinstance(o, Order)} == {OrderStatus.CONFIRMED}
    assert len({o.updated_at for o in outcomes if isinstance(o, Order)}) == 1  # one answer, replayed
    sale = engine.get_sale("IDEM-7")
    assert (sale.reserved, sale.sold) == (0, 1)
    assert engine.user_counts("IDEM-7", "alice").purchased == 1
    assert event_types(engine)["confirmed"] == 1
    with pytest.raises(InvalidState):  # a new key is a new attempt: the order is no longer PENDING
        engine.confirm(order.id, "alice", "tx-1", idempotency_key="c2")
    check_invariants(engine)


def test_a_confirm_retry_repeats_the_first_refusal(graceless_engine: Engine) -> None:
    engine = graceless_engine
    engine.load_sale(SaleSettings(sku="IDEM-8", total=1))
    hold = engine.reserve("IDEM-8", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    engine.fail_checkout(order.id, "alice", "PAYMENT_DECLINED")
    with pytest.raises(InvalidState) as first:
        engine.confirm(order.id, "alice", "tx", idempotency_key="c1")
    second_order = engine.begin_checkout(hold.id, "alice", "card")
    with pytest.raises(InvalidState) as again:
        engine.confirm(order.id, "alice", "tx", idempotency_key="c1")
    assert again.value.message == first.value.message
    confirmed = engine.confirm(second_order.id, "alice", "tx", idempotency_key="c2")
    assert confirmed.status == OrderStatus.CONFIRMED
    assert engine.get_sale("IDEM-8").sold == 1
    check_invariants(engine)


def test_a_key_reused_for_another_sku_of_the_same_partition_is_a_new_request(engine: Engine) -> None:
    # The record is scoped to the SKU (and to the reservation or order for checkout and confirm), so
    # whether a reused key replays never depends on which partition a hash put the SKU in.
    first_sku = sku_in_partition(3, stem="IDEM-A")
    other_sku = sku_in_partition(3, stem="IDEM-B")
    for sku in (first_sku, other_sku):
        engine.load_sale(SaleSettings(sku=sku, total=1))
    a = engine.reserve(first_sku, "alice", idempotency_key="k")
    b = engine.reserve(other_sku, "alice", idempotency_key="k")
    assert (a.sku, b.sku) == (first_sku, other_sku)
    assert engine.get_sale(other_sku).reserved == 1
    order_a = engine.begin_checkout(a.id, "alice", "card", idempotency_key="pay")
    order_b = engine.begin_checkout(b.id, "alice", "card", idempotency_key="pay")
    assert order_b.reservation_id == b.id != order_a.reservation_id
    confirmed_a = engine.confirm(order_a.id, "alice", "tx-a", idempotency_key="c")
    confirmed_b = engine.confirm(order_b.id, "alice", "tx-b", idempotency_key="c")
    assert (confirmed_a.id, confirmed_b.id) == (order_a.id, order_b.id)
    assert confirmed_b.transaction_id == "tx-b"
    assert engine.get_sale(other_sku).sold == 1
    check_invariants(engine)


def test_a_keyed_sold_out_refusal_while_a_hold_lasts_is_kept_and_repeated(engine: Engine) -> None:
    """reserve.lua answers a keyed call on a sold-out SKU before its full checks, and keeps that answer
    exactly as they would: a retry with the key repeats it after stock came back."""
    engine.load_sale(SaleSettings(sku="IDEM-9", total=1, reservation_ttl_ms=60_000))
    engine.reserve("IDEM-9", "alice")
    with pytest.raises(OutOfStock, match=r"has 0 units left; the first hold ends in \d+ ms") as first:
        engine.reserve("IDEM-9", "carol", idempotency_key="k")
    p = engine.keys.for_sku("IDEM-9")
    kept = [v for key in engine.redis.scan_iter(p.tag + "idem:*") for v in engine.redis.hvals(key)]
    assert kept == [f"!OUT_OF_STOCK {first.value.message}"]
    engine.restock("IDEM-9", 1)
    with pytest.raises(OutOfStock) as again:
        engine.reserve("IDEM-9", "carol", idempotency_key="k")
    assert again.value.message == first.value.message
    assert engine.reserve("IDEM-9", "carol", idempotency_key="k2").quantity == 1
    check_invariants(engine)
