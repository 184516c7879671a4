"""A reservation's record in its two layouts (lua/includes/reservations.lua): an open hold's seven fields,
an ended one's nine. Holds whose open record is still in the nine-field layout (written before open records
were shortened: a Redis upgraded in place) are read, paid for, released and expired like any other."""

from __future__ import annotations

import time

from engine_checks import check_invariants
from flashsale.engine import Engine, ReservationStatus, SaleSettings


def _nine_fields(engine: Engine, reservation_id: str) -> None:
    """Rewrites an open hold's record in the layout every open record had before."""
    p = engine.keys.for_reservation(reservation_id)
    sku, user, quantity, created, expires, order, pay_until = engine.redis.hget(
        p.open_holds(), reservation_id
    ).split(" ")
    old = f"{sku} {user} {quantity} RESERVED {created} {expires} {order} {pay_until} 0"
    engine.redis.hset(p.open_holds(), reservation_id, old)


def test_open_records_have_seven_fields_and_ended_ones_nine(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="REC-1", total=5, per_user_limit=2))
    held = engine.reserve("REC-1", "ann", quantity=2)
    p = engine.keys.for_reservation(held.id)
    record = engine.redis.hget(p.open_holds(), held.id)
    assert record == f"REC-1 ann 2 {held.created_at} {held.expires_at} - 0"
    engine.release(held.id, "ann")
    ended = engine.redis.get(p.reservation(held.id)).split(" ")
    assert len(ended) == 9, ended
    assert ended[3] == "CANCELLED", ended
    check_invariants(engine)


def test_a_hold_with_a_nine_field_open_record_is_released_like_any_other(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="REC-2", total=5, per_user_limit=2))
    held = engine.reserve("REC-2", "bob", quantity=2)
    _nine_fields(engine, held.id)
    assert engine.get_reservation(held.id) == held
    released = engine.release(held.id, "bob")
    assert released.status == ReservationStatus.CANCELLED
    sale = engine.get_sale("REC-2")
    assert (sale.available, sale.reserved) == (5, 0)
    check_invariants(engine)


def test_a_hold_with_a_nine_field_open_record_is_paid_for(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="REC-3", total=5))
    held = engine.reserve("REC-3", "cy")
    _nine_fields(engine, held.id)
    order = engine.begin_checkout(held.id, "cy", "card")
    engine.confirm(order.id, "cy", "txn-1")
    assert engine.get_reservation(held.id).status == ReservationStatus.CONFIRMED
    sale = engine.get_sale("REC-3")
    assert (sale.available, sale.reserved, sale.sold) == (4, 0, 1)
    check_invariants(engine)


def test_a_hold_with_a_nine_field_open_record_expires(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="REC-4", total=1, reservation_ttl_ms=1000))
    held = engine.reserve("REC-4", "dee")
    _nine_fields(engine, held.id)
    seconds, micros = engine.redis.time()
    time.sleep(max(0, held.expires_at - (seconds * 1000 + micros // 1000) + 20) / 1000)
    # No sweeper: the next shopper's reserve ends the lapsed hold and takes its unit.
    engine.reserve("REC-4", "eve")
    assert engine.get_reservation(held.id).status == ReservationStatus.EXPIRED
    check_invariants(engine)
