"""Holds end at their deadline: through the sweeper, through a later reserve of the same SKU when no
sweeper runs, and together with an abandoned checkout. Deadlines use a 1-second TTL (the minimum)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from engine_checks import all_events, check_invariants, event_types
from flashsale.engine import (
    AsyncEngine,
    Engine,
    FlashSaleError,
    InvalidState,
    OrderStatus,
    OutOfStock,
    ReservationExpired,
    ReservationStatus,
    SaleSettings,
)
from flashsale.engine.events import effect

TTL_MS = 1000


def _sleep_past(deadline_ms: int, engine: Engine) -> None:
    """Sleeps until Redis's clock (the one every deadline is measured on) has passed the deadline."""
    seconds, micros = engine.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    time.sleep(max(0, deadline_ms - now_ms + 20) / 1000)


def test_the_sweeper_returns_lapsed_holds_to_stock(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-1", total=3, reservation_ttl_ms=TTL_MS))
    held = [engine.reserve("EXP-1", f"user-{n}") for n in range(3)]
    assert engine.expire_all() == 0  # nothing is due yet
    with pytest.raises(OutOfStock):
        engine.reserve("EXP-1", "late")
    _sleep_past(max(r.expires_at for r in held), engine)

    assert engine.expire_all() == 3
    assert engine.expire_all() == 0  # each hold ends once
    sale = engine.get_sale("EXP-1")
    assert (sale.available, sale.reserved, sale.sold) == (3, 0, 0)
    for r in held:
        assert engine.get_reservation(r.id).status == ReservationStatus.EXPIRED
        assert engine.user_counts("EXP-1", r.user).held == 0
    expired = [e for e in all_events(engine) if e.type == "expired"]
    assert sorted(e.reservation_id for e in expired) == sorted(r.id for r in held)
    check_invariants(engine)


def test_expire_of_one_partition_ends_at_most_its_limit(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-2", total=5, reservation_ttl_ms=TTL_MS))
    held = [engine.reserve("EXP-2", f"user-{n}") for n in range(5)]
    _sleep_past(max(r.expires_at for r in held), engine)
    partition = engine.keys.for_sku("EXP-2").index
    assert engine.expire(partition, limit=2) == 2
    assert engine.get_sale("EXP-2").available == 2
    assert engine.expire(partition, limit=500) == 3
    assert engine.get_sale("EXP-2").available == 5
    check_invariants(engine)


def test_without_a_sweeper_a_later_reserve_of_the_sku_takes_back_lapsed_holds(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-3", total=2, reservation_ttl_ms=TTL_MS))
    first = [engine.reserve("EXP-3", "alice"), engine.reserve("EXP-3", "bob")]
    with pytest.raises(OutOfStock):
        engine.reserve("EXP-3", "carol")
    _sleep_past(max(r.expires_at for r in first), engine)

    carol = engine.reserve("EXP-3", "carol")  # no expire() ran: reserve itself ended the lapsed holds
    assert carol.status == ReservationStatus.RESERVED
    sale = engine.get_sale("EXP-3")
    assert (sale.available, sale.reserved) == (1, 1)
    assert [engine.get_reservation(r.id).status for r in first] == [ReservationStatus.EXPIRED] * 2
    assert engine.user_counts("EXP-3", "alice").held == 0
    assert event_types(engine) == {"sale_loaded": 1, "reserved": 3, "expired": 2}
    # The sweeper finds nothing left to do: the lazy expiry also cleared the partition's deadlines.
    assert engine.expire_all() == 0
    check_invariants(engine)


def test_a_lazy_expiry_only_touches_the_sku_being_reserved(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-4", total=1, reservation_ttl_ms=TTL_MS))
    engine.load_sale(SaleSettings(sku="EXP-5", total=1, reservation_ttl_ms=TTL_MS))
    a = engine.reserve("EXP-4", "alice")
    b = engine.reserve("EXP-5", "alice")
    _sleep_past(max(a.expires_at, b.expires_at), engine)
    engine.reserve("EXP-4", "bob")
    assert engine.get_reservation(a.id).status == ReservationStatus.EXPIRED
    assert engine.get_reservation(b.id).status == ReservationStatus.RESERVED  # its deadline passed, but
    assert engine.get_sale("EXP-5").reserved == 1  # no one touched EXP-5 yet
    assert engine.expire_all() == 1
    check_invariants(engine)


def test_checkout_and_release_of_a_lapsed_hold_end_it_and_say_expired(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-6", total=2, reservation_ttl_ms=TTL_MS))
    a = engine.reserve("EXP-6", "alice")
    b = engine.reserve("EXP-6", "bob")
    _sleep_past(max(a.expires_at, b.expires_at), engine)
    with pytest.raises(ReservationExpired):
        engine.begin_checkout(a.id, "alice", "card")
    with pytest.raises(ReservationExpired):
        engine.release(b.id, "bob")
    assert engine.get_sale("EXP-6").available == 2
    assert event_types(engine)["expired"] == 2
    assert engine.expire_all() == 0
    check_invariants(engine)


def test_an_abandoned_checkout_fails_its_order_and_returns_the_units(graceless_engine: Engine) -> None:
    engine = graceless_engine
    engine.load_sale(SaleSettings(sku="EXP-7", total=1, reservation_ttl_ms=TTL_MS, flash_price_cents=500))
    hold = engine.reserve("EXP-7", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    assert order.status == OrderStatus.PENDING
    _sleep_past(hold.expires_at, engine)

    assert engine.expire_all() == 1
    failed = engine.get_order(order.id)
    assert failed.status == OrderStatus.FAILED
    assert failed.failure_reason == "CHECKOUT_TIMEOUT"
    assert engine.get_reservation(hold.id).status == ReservationStatus.EXPIRED
    sale = engine.get_sale("EXP-7")
    assert (sale.available, sale.reserved, sale.sold) == (1, 0, 0)
    assert engine.user_counts("EXP-7", "alice").held == 0
    with pytest.raises(InvalidState):
        engine.confirm(order.id, "alice", "tx-too-late")
    (expired,) = [e for e in all_events(engine) if e.type == "expired"]
    assert expired.order_id == order.id
    assert effect(expired).order == {
        "status": "FAILED",
        "failure_reason": "CHECKOUT_TIMEOUT",
        "updated_at": expired.at,
    }
    check_invariants(engine)


def test_the_payment_grace_protects_a_hold_being_paid_but_not_one_whose_payment_failed(
    engine: Engine,
) -> None:
    # The default engine gives a checkout 30 seconds of grace.
    engine.load_sale(SaleSettings(sku="EXP-8", total=2, reservation_ttl_ms=TTL_MS))
    paid = engine.reserve("EXP-8", "alice")
    order = engine.begin_checkout(paid.id, "alice", "card")
    declined = engine.reserve("EXP-8", "bob")
    engine.fail_checkout(engine.begin_checkout(declined.id, "bob", "card").id, "bob", "PAYMENT_DECLINED")
    check_invariants(engine)  # the declined hold is back on its own deadline, not the grace period's
    _sleep_past(max(paid.expires_at, declined.expires_at), engine)

    assert engine.expire_all() == 1  # only the declined hold lapses
    assert engine.get_reservation(declined.id).status == ReservationStatus.EXPIRED
    confirmed = engine.confirm(order.id, "alice", "tx-1")
    assert confirmed.status == OrderStatus.CONFIRMED
    sale = engine.get_sale("EXP-8")
    assert (sale.available, sale.reserved, sale.sold) == (1, 0, 1)
    check_invariants(engine)


@pytest.mark.parametrize("due_last", ["kept", "missing"])
def test_a_hold_made_after_the_ttl_was_shortened_ends_at_its_own_deadline_before_older_ones(
    engine: Engine, due_last: str
) -> None:
    """A SKU's holds list runs in deadline order (lua/includes/holds.lua): a hold whose deadline comes before
    the list's last goes to the SKU's sorted set instead, and still ends on time. reserve.lua compares with
    the SKU hash's due_last, or, in a hash from before it was kept ("missing"), with the list's last entry."""
    engine.load_sale(SaleSettings(sku="EXP-9", total=3, reservation_ttl_ms=60_000))
    early = engine.reserve("EXP-9", "alice")
    p = engine.keys.for_sku("EXP-9")
    assert engine.redis.hget(p.sku("EXP-9"), "due_last") == str(early.expires_at)
    if due_last == "missing":
        engine.redis.hdel(p.sku("EXP-9"), "due_last")
    engine.load_sale(SaleSettings(sku="EXP-9", total=3, reservation_ttl_ms=TTL_MS))
    late = engine.reserve("EXP-9", "bob")
    assert late.expires_at < early.expires_at
    assert engine.redis.zscore(p.holds("EXP-9"), late.id) == late.expires_at
    assert engine.redis.lrange(p.due("EXP-9"), 0, -1) == [f"{early.expires_at} {early.id}"]
    check_invariants(engine)
    _sleep_past(late.expires_at, engine)

    assert engine.expire_all() == 1
    assert engine.get_reservation(late.id).status == ReservationStatus.EXPIRED
    assert engine.get_reservation(early.id).status == ReservationStatus.RESERVED
    check_invariants(engine)


def test_the_list_entries_of_holds_that_ended_go_when_their_deadline_comes(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-10", total=3, reservation_ttl_ms=TTL_MS))
    kept, released, bought = (engine.reserve("EXP-10", user) for user in ("ann", "ben", "cat"))
    engine.release(released.id, "ben")
    engine.confirm(engine.begin_checkout(bought.id, "cat", "card").id, "cat", "tx-1")
    p = engine.keys.for_sku("EXP-10")
    assert engine.redis.llen(p.due("EXP-10")) == 3  # entries of ended holds stay until their deadline
    assert engine.redis.zcard(p.holds("EXP-10")) == 0  # the paid hold left the set when it was bought
    check_invariants(engine)
    _sleep_past(kept.expires_at, engine)

    assert engine.expire_all() == 1  # the one open hold; the other two entries just go
    assert engine.get_reservation(kept.id).status == ReservationStatus.EXPIRED
    assert engine.redis.llen(p.due("EXP-10")) == 0
    sale = engine.get_sale("EXP-10")
    assert (sale.available, sale.reserved, sale.sold) == (2, 0, 1)
    check_invariants(engine)


def test_a_sku_sold_out_by_purchases_is_refused_and_a_refusal_drops_the_left_entries(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-11", total=2, reservation_ttl_ms=TTL_MS))
    holds = [engine.reserve("EXP-11", user) for user in ("ann", "ben")]
    for hold in holds:
        engine.confirm(engine.begin_checkout(hold.id, hold.user, "card").id, hold.user, f"tx-{hold.user}")
    with pytest.raises(OutOfStock):
        engine.reserve("EXP-11", "cat")
    p = engine.keys.for_sku("EXP-11")
    _sleep_past(max(h.expires_at for h in holds), engine)

    with pytest.raises(OutOfStock):  # no sweeper: the refusal itself drops the two bought holds' entries
        engine.reserve("EXP-11", "cat")
    assert engine.redis.llen(p.due("EXP-11")) == 0
    with pytest.raises(OutOfStock, match="none is held"):
        engine.reserve("EXP-11", "dan")
    sale = engine.get_sale("EXP-11")
    assert (sale.available, sale.reserved, sale.sold) == (0, 0, 2)
    check_invariants(engine)


def test_a_sweep_reads_the_holds_list_past_its_first_chunks_and_stops_at_its_limit(engine: Engine) -> None:
    """The list's head is read in growing chunks (1, 8, 64): 100 lapsed holds take all three and more."""
    engine.load_sale(SaleSettings(sku="EXP-12", total=100, reservation_ttl_ms=TTL_MS))
    held = [engine.reserve("EXP-12", f"user-{n}") for n in range(100)]
    p = engine.keys.for_sku("EXP-12")
    _sleep_past(max(r.expires_at for r in held), engine)

    assert engine.expire(p.index, limit=90) == 90
    assert engine.redis.llen(p.due("EXP-12")) == 10
    assert engine.expire(p.index, limit=500) == 10
    assert engine.redis.llen(p.due("EXP-12")) == 0
    assert engine.get_sale("EXP-12").available == 100
    check_invariants(engine)


def test_entries_of_ended_holds_do_not_count_against_a_sweeps_limit(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="EXP-13", total=4, reservation_ttl_ms=TTL_MS))
    released = [engine.reserve("EXP-13", f"gone-{n}") for n in range(3)]
    kept = engine.reserve("EXP-13", "kept")
    for hold in released:
        engine.release(hold.id, hold.user)
    p = engine.keys.for_sku("EXP-13")
    _sleep_past(kept.expires_at, engine)

    assert engine.expire(p.index, limit=1) == 1  # past the three entries left by released holds
    assert engine.get_reservation(kept.id).status == ReservationStatus.EXPIRED
    assert engine.redis.llen(p.due("EXP-13")) == 0
    check_invariants(engine)


def _due_first(engine: Engine, sku: str) -> int | None:
    value = engine.redis.hget(engine.keys.for_sku(sku).sku(sku), "due_first")
    return None if value is None else int(value)


def test_a_hold_made_with_a_shorter_ttl_brings_the_sold_out_answer_forward(engine: Engine) -> None:
    """A sold-out refusal keeps the SKU's first deadline as due_first and trusts it until it passes
    (lua/reserve.lua): a later hold with an earlier deadline (the sale's TTL was shortened) must lower it,
    or the SKU would be refused as sold out while that hold has lapsed."""
    engine.load_sale(SaleSettings(sku="EXP-20", total=1, reservation_ttl_ms=60_000))
    long = engine.reserve("EXP-20", "alice")
    with pytest.raises(OutOfStock, match="the first hold ends in"):
        engine.reserve("EXP-20", "bob")
    assert _due_first(engine, "EXP-20") == long.expires_at  # kept by the refusal
    engine.load_sale(SaleSettings(sku="EXP-20", reservation_ttl_ms=TTL_MS))
    engine.restock("EXP-20", 1)
    short = engine.reserve("EXP-20", "carol")
    assert _due_first(engine, "EXP-20") == short.expires_at
    with pytest.raises(OutOfStock, match="the first hold ends in"):
        engine.reserve("EXP-20", "bob")
    check_invariants(engine)
    _sleep_past(short.expires_at, engine)

    assert engine.reserve("EXP-20", "dan").status == ReservationStatus.RESERVED  # carol's hold ended lazily
    assert engine.get_reservation(short.id).status == ReservationStatus.EXPIRED
    assert engine.get_reservation(long.id).status == ReservationStatus.RESERVED
    check_invariants(engine)


def test_a_declined_payment_brings_the_sold_out_answer_back_to_the_holds_own_deadline(engine: Engine) -> None:
    """A hold being paid for lasts its payment grace (30 s by default): a sold-out refusal keeps that as
    due_first; a declined payment puts the hold back on its own deadline, maybe passed, and must lower it."""
    engine.load_sale(SaleSettings(sku="EXP-21", total=1, reservation_ttl_ms=TTL_MS))
    hold = engine.reserve("EXP-21", "alice")
    order = engine.begin_checkout(hold.id, "alice", "card")
    _sleep_past(hold.expires_at, engine)
    with pytest.raises(OutOfStock):  # its list entry is due, but the hold is being paid for: nothing ends
        engine.reserve("EXP-21", "bob")
    with pytest.raises(OutOfStock, match="the first hold ends in"):  # the fast path's, from the sorted set
        engine.reserve("EXP-21", "bob")
    grace = _due_first(engine, "EXP-21")
    assert grace is not None
    assert grace > hold.expires_at
    check_invariants(engine)

    engine.fail_checkout(order.id, "alice", "PAYMENT_DECLINED")
    assert _due_first(engine, "EXP-21") == hold.expires_at
    check_invariants(engine)
    assert engine.reserve("EXP-21", "bob").status == ReservationStatus.RESERVED  # alice's hold ended lazily
    assert engine.get_reservation(hold.id).status == ReservationStatus.EXPIRED
    check_invariants(engine)


def test_sold_out_comes_first_when_the_first_index_entry_is_of_a_hold_that_ended(engine: Engine) -> None:
    """A released hold's list entry stays until the head reaches it. Once its deadline passes, the SKU is
    still sold out (no hold lapsed), and that answer comes before the limit's and the sale window's, as
    every API process may give it from memory (found by the state machine: INVALID_QUANTITY came back)."""
    engine.load_sale(SaleSettings(sku="EXP-22", total=2, per_user_limit=1, reservation_ttl_ms=TTL_MS))
    released = engine.reserve("EXP-22", "alice")
    engine.release(released.id, "alice")
    time.sleep(0.3)
    later = [engine.reserve("EXP-22", user) for user in ("bob", "carol")]
    _sleep_past(released.expires_at, engine)
    assert min(r.expires_at for r in later) > released.expires_at + 200  # theirs are still ahead
    due = engine.keys.for_sku("EXP-22").due("EXP-22")
    assert engine.redis.llen(due) == 3  # alice's entry first, though her hold ended

    with pytest.raises(OutOfStock, match="has 0 units left"):
        engine.reserve("EXP-22", "dan", 2)  # above the limit of 1, and sold out: sold out first
    assert engine.redis.llen(due) == 2  # the ended hold's entry dropped on the way
    with pytest.raises(OutOfStock, match="the first hold ends in"):  # the fast path again
        engine.reserve("EXP-22", "dan", 2)
    for r in later:
        assert engine.get_reservation(r.id).status == ReservationStatus.RESERVED
    check_invariants(engine)


@pytest.mark.cluster
async def test_a_herd_pressing_as_many_holds_lapse_together_gets_answers_not_errors(
    async_engine: AsyncEngine, engine: Engine
) -> None:
    """The first wave's holds of a sale all lapse at once while the herd keeps pressing. Each press refused
    for stock ends lapsed holds itself, naming their keys first (NEEDS_KEYS); with a thousand presses at
    once, the holds one press named were ended by another before its second send, round after round, and
    after 8 sends the press failed (a 503 over HTTP: 8,616 of 9,000 in a trial). Now a press sent again
    that finds its holds ended by others is refused OUT_OF_STOCK for now; the next presses and the
    sweeper end the rest, and every unit is sold again."""
    await async_engine.load_sale(SaleSettings(sku="HERD", total=200, reservation_ttl_ms=1_000))
    await asyncio.gather(*(async_engine.reserve("HERD", f"first-{n}") for n in range(200)))
    await asyncio.sleep(1.1)

    async def press(user: str) -> str:
        try:
            await async_engine.reserve("HERD", user)
        except FlashSaleError as error:
            return error.code
        return "granted"

    wave = Counter(await asyncio.gather(*(press(f"late-{n}") for n in range(1000))))
    assert set(wave) == {"granted", "OUT_OF_STOCK"}, wave
    assert 16 <= wave["granted"] <= 200
    while engine.expire_all():  # the sweeper's pass
        pass
    again = Counter(await asyncio.gather(*(press(f"later-{n}") for n in range(1000))))
    assert again == {"granted": 200 - wave["granted"], "OUT_OF_STOCK": 1000 - (200 - wave["granted"])}
    sale = engine.get_sale("HERD")
    assert (sale.available, sale.reserved) == (0, 200)
    assert event_types(engine)["expired"] == 200
    check_invariants(engine)
