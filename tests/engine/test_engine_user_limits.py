"""The per-user limit under a burst of clicks from one user: never more than the limit is held."""

from __future__ import annotations

from engine_checks import check_invariants, event_types, run_together
from flashsale.engine import AlreadyReserved, Engine, Reservation, SaleSettings


def test_the_same_user_double_clicking_fifty_times_at_once_gets_exactly_one_reservation(
    engine: Engine,
) -> None:
    engine.load_sale(SaleSettings(sku="CLICK-1", total=100))
    outcomes = run_together(*[lambda: engine.reserve("CLICK-1", "alice")] * 50)
    won = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(won) == 1
    assert all(type(o) is AlreadyReserved for o in outcomes if o not in won), outcomes
    assert engine.user_counts("CLICK-1", "alice").held == 1
    sale = engine.get_sale("CLICK-1")
    assert (sale.available, sale.reserved) == (99, 1)
    assert event_types(engine)["reserved"] == 1
    check_invariants(engine)


def test_with_a_limit_of_two_fifty_clicks_for_one_unit_each_get_exactly_two(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="CLICK-2", total=100, per_user_limit=2))
    outcomes = run_together(*[lambda: engine.reserve("CLICK-2", "bob", 1)] * 50)
    won = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(won) == 2
    assert len({r.id for r in won}) == 2
    assert all(type(o) is AlreadyReserved for o in outcomes if o not in won), outcomes
    assert engine.user_counts("CLICK-2", "bob").held == 2
    assert engine.get_sale("CLICK-2").reserved == 2
    assert event_types(engine)["reserved"] == 2
    check_invariants(engine)
