"""Two requests about the same reservation or order, at the same instant: exactly one outcome wins, the
other gets a clear refusal, and the invariants hold after every round."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
from engine_checks import check_invariants, event_types, run_together
from flashsale.engine import (
    CheckoutInProgress,
    Engine,
    InvalidState,
    Order,
    OrderStatus,
    Reservation,
    ReservationExpired,
    ReservationStatus,
    SaleSettings,
)

# Rounds per race: fewer on the cluster variant, which the suite's time budget pays for twice.
ROUNDS, CLUSTER_ROUNDS = 30, 10
T = TypeVar("T")

pytestmark = pytest.mark.cluster


@pytest.fixture
def rounds(on_cluster: bool) -> int:
    return CLUSTER_ROUNDS if on_cluster else ROUNDS


def _at_each_deadline(
    engine: Engine, sku: str, deadlines: list[int], act: Callable[[int], T]
) -> tuple[list[T | Exception], int]:
    """Calls act(i) within a few ms either side of deadline i (Redis's clock is this machine's clock)
    while a sweeper runs flat out on the SKU's partition. Each outcome, and how many holds the sweeper
    ended."""
    partition = engine.keys.for_sku(sku).index
    stop = threading.Event()
    swept: list[int] = []

    def sweeper() -> None:
        while not stop.is_set():
            swept.append(engine.expire(partition))
            time.sleep(0.001)  # leave the other thread the interpreter lock now and then

    thread = threading.Thread(target=sweeper)
    outcomes: list[T | Exception] = []
    time.sleep(max(0.0, deadlines[0] / 1000 - time.time() - 0.05))
    thread.start()
    try:
        for i, deadline in enumerate(deadlines):
            time.sleep(max(0.0, (deadline + (i % 11) - 8) / 1000 - time.time()))
            try:
                outcomes.append(act(i))
            except Exception as error:
                outcomes.append(error)
    finally:
        stop.set()
        thread.join()
    return outcomes, sum(swept)


def test_checkout_racing_the_sweeper_at_the_deadline_has_exactly_one_outcome(
    engine: Engine, rounds: int
) -> None:
    engine.load_sale(SaleSettings(sku="RACE-1", total=rounds, reservation_ttl_ms=1000))
    holds = sorted((engine.reserve("RACE-1", f"user-{n}") for n in range(rounds)), key=lambda r: r.expires_at)
    outcomes, swept = _at_each_deadline(
        engine,
        "RACE-1",
        [h.expires_at for h in holds],
        lambda i: engine.begin_checkout(holds[i].id, holds[i].user, "card"),
    )

    orders = [o for o in outcomes if isinstance(o, Order)]
    assert all(isinstance(o, Order | ReservationExpired) for o in outcomes), outcomes
    for hold, outcome in zip(holds, outcomes, strict=True):
        reservation = engine.get_reservation(hold.id)
        if isinstance(outcome, Order):
            assert outcome.status == OrderStatus.PENDING
            assert reservation.status == ReservationStatus.RESERVED
            assert reservation.order_id == outcome.id
        else:
            assert reservation.status == ReservationStatus.EXPIRED
            assert reservation.order_id is None
    expired = rounds - len(orders)
    # (Counters compare missing types as zero.)
    assert event_types(engine) == Counter(
        sale_loaded=1, reserved=rounds, checkout_started=len(orders), expired=expired
    )
    print(f"checkout won {len(orders)}, expiry won {expired}, the sweeper ended {swept}")
    assert swept <= expired
    sale = engine.get_sale("RACE-1")
    assert (sale.available, sale.reserved) == (expired, len(orders))
    check_invariants(engine)
    # The winners' payments still go through: the grace period protects them from the sweeper.
    assert engine.expire_all() == 0
    for order in orders:
        engine.confirm(order.id, order.user, "tx")
    assert engine.get_sale("RACE-1").sold == len(orders)
    check_invariants(engine)


def _hold(engine: Engine, sku: str, n: int) -> Reservation:
    return engine.reserve(sku, f"user-{n}")


def test_checkout_racing_release_of_the_same_reservation_has_exactly_one_outcome(
    engine: Engine, rounds: int
) -> None:
    engine.load_sale(SaleSettings(sku="RACE-2", total=rounds))
    checkouts = 0
    for n in range(rounds):
        hold = _hold(engine, "RACE-2", n)
        checkout, release = run_together(
            partial(engine.begin_checkout, hold.id, hold.user, "card"),
            partial(engine.release, hold.id, hold.user),
        )
        reservation = engine.get_reservation(hold.id)
        if isinstance(checkout, Order):
            checkouts += 1
            assert type(release) is CheckoutInProgress, release
            assert reservation.status == ReservationStatus.RESERVED
            assert reservation.order_id == checkout.id
        else:
            assert type(checkout) is InvalidState, checkout
            assert isinstance(release, Reservation)
            assert release.status == ReservationStatus.CANCELLED
            assert reservation.status == ReservationStatus.CANCELLED
        check_invariants(engine)
    types = event_types(engine)
    assert (types["checkout_started"], types["released"]) == (checkouts, rounds - checkouts)
    sale = engine.get_sale("RACE-2")
    assert (sale.reserved, sale.available) == (checkouts, rounds - checkouts)


def test_two_checkouts_of_one_reservation_make_exactly_one_pending_order(engine: Engine, rounds: int) -> None:
    engine.load_sale(SaleSettings(sku="RACE-3", total=rounds, flash_price_cents=999))
    for n in range(rounds):
        hold = _hold(engine, "RACE-3", n)
        first, second = run_together(
            partial(engine.begin_checkout, hold.id, hold.user, "card", idempotency_key="tab-1"),
            partial(engine.begin_checkout, hold.id, hold.user, "wallet", idempotency_key="tab-2"),
        )
        orders = [o for o in (first, second) if isinstance(o, Order)]
        refusals = [o for o in (first, second) if not isinstance(o, Order)]
        assert len(orders) == 1, (first, second)
        assert [type(o) for o in refusals] == [CheckoutInProgress]
        (order,) = orders
        assert order.status == OrderStatus.PENDING
        assert order.total_cents == 999
        assert engine.get_reservation(hold.id).order_id == order.id
        check_invariants(engine)
    assert event_types(engine)["checkout_started"] == rounds
    assert engine.get_sale("RACE-3").reserved == rounds  # one charge per hold, nothing sold twice


def test_cancelling_one_order_twice_at_once_cancels_it_exactly_once(engine: Engine, rounds: int) -> None:
    engine.load_sale(SaleSettings(sku="RACE-4", total=rounds))
    for n in range(rounds):
        hold = _hold(engine, "RACE-4", n)
        order = engine.begin_checkout(hold.id, hold.user, "card")
        engine.confirm(order.id, hold.user, f"tx-{n}")
        by_user, by_admin = run_together(
            partial(engine.cancel_order, order.id, hold.user),
            partial(engine.cancel_order, order.id, "support", admin=True),
        )
        cancelled = [o for o in (by_user, by_admin) if isinstance(o, Order)]
        assert len(cancelled) == 1, (by_user, by_admin)
        assert cancelled[0].status == OrderStatus.CANCELLED
        assert [type(o) for o in (by_user, by_admin) if not isinstance(o, Order)] == [InvalidState]
        assert engine.user_counts("RACE-4", hold.user).purchased == 0
        check_invariants(engine)
    sale = engine.get_sale("RACE-4")
    assert (sale.available, sale.reserved, sale.sold) == (rounds, 0, 0)
    assert event_types(engine)["order_cancelled"] == rounds


def test_a_payment_confirmed_as_its_abandoned_checkout_times_out_has_exactly_one_outcome(
    graceless_engine: Engine, rounds: int
) -> None:
    # No grace: a checkout's hold lapses at its own deadline, so confirm and the sweeper meet there.
    engine = graceless_engine
    engine.load_sale(SaleSettings(sku="RACE-5", total=rounds, reservation_ttl_ms=1000))
    holds = [engine.reserve("RACE-5", f"user-{n}") for n in range(rounds)]
    orders = sorted(
        (engine.begin_checkout(h.id, h.user, "card") for h in holds),
        key=lambda o: next(h.expires_at for h in holds if h.id == o.reservation_id),
    )
    deadlines = [engine.get_reservation(o.reservation_id).expires_at for o in orders]
    outcomes, swept = _at_each_deadline(
        engine, "RACE-5", deadlines, lambda i: engine.confirm(orders[i].id, orders[i].user, f"tx-{i}")
    )
    swept += engine.expire_all()  # whatever the sweeper had not reached yet

    # The sweeper first (INVALID_STATE: the order is FAILED), or confirm first past the grace, which ends
    # the hold itself (RESERVATION_EXPIRED), or confirm in time (the order).
    assert all(isinstance(o, Order | InvalidState | ReservationExpired) for o in outcomes), outcomes
    confirmed = 0
    for order, outcome in zip(orders, outcomes, strict=True):
        stored = engine.get_order(order.id)
        reservation = engine.get_reservation(order.reservation_id)
        if isinstance(outcome, Order):
            confirmed += 1
            assert (outcome.status, stored.status) == (OrderStatus.CONFIRMED, OrderStatus.CONFIRMED)
            assert reservation.status == ReservationStatus.CONFIRMED
        else:
            assert (stored.status, stored.failure_reason) == (OrderStatus.FAILED, "CHECKOUT_TIMEOUT")
            assert reservation.status == ReservationStatus.EXPIRED
    print(f"payment won {confirmed}, the timeout won {rounds - confirmed}")
    ended_by_confirm = sum(isinstance(o, ReservationExpired) for o in outcomes)
    assert swept + ended_by_confirm == rounds - confirmed
    assert event_types(engine) == Counter(
        sale_loaded=1,
        reserved=rounds,
        checkout_started=rounds,
        confirmed=confirmed,
        expired=rounds - confirmed,
    )
    sale = engine.get_sale("RACE-5")
    assert (sale.available, sale.reserved, sale.sold) == (rounds - confirmed, 0, confirmed)
    check_invariants(engine)
