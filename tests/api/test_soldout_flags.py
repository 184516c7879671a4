"""The rules of a process's sold-out flags (api/soldout.py), on a clock the test turns by hand: a flag
only refuses what reserve would refuse, and ends at the first of a stock message, the first hold's
deadline, the TTL, or the subscription being lost; a refusal that may be old news sets none."""

from __future__ import annotations

import pytest
from flashsale.api.soldout import SoldOutFlags


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


NONE_HELD = "sku {sku} has {left} units left; none is held"
HOLD_ENDS = "sku {sku} has {left} units left; the first hold ends in {ms} ms"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def flags(clock: Clock) -> SoldOutFlags:
    flags = SoldOutFlags(ttl_s=1.0, clock=clock)
    flags.subscribed()
    return flags


def _refuse(flags: SoldOutFlags, sku: str, message: str) -> None:
    flags.refused(sku, flags.stamp(sku), message)


def test_a_flag_refuses_only_more_units_than_were_left(flags: SoldOutFlags) -> None:
    assert not flags.refuses("A", 1)
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=2))
    assert flags.refuses("A", 3)
    assert not flags.refuses("A", 2)  # two units may still be there: Redis is asked
    assert not flags.refuses("B", 3)  # another SKU knows nothing


def test_a_flag_ends_at_its_ttl(flags: SoldOutFlags, clock: Clock) -> None:
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    clock.now += 0.999
    assert flags.refuses("A", 1)
    clock.now += 0.001
    assert not flags.refuses("A", 1)
    assert len(flags) == 0


def test_a_flag_ends_when_the_first_hold_may_lapse_counted_from_when_the_request_left(
    flags: SoldOutFlags, clock: Clock
) -> None:
    stamp = flags.stamp("A")
    clock.now += 0.1  # the answer took 100 ms to come back
    flags.refused("A", stamp, HOLD_ENDS.format(sku="A", left=0, ms=300))
    clock.now += 0.199
    assert flags.refuses("A", 1)
    clock.now += 0.001  # 300 ms after the request left: the script ran later, so never late
    assert not flags.refuses("A", 1)


def test_a_stock_message_ends_the_flag(flags: SoldOutFlags) -> None:
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    _refuse(flags, "B", NONE_HELD.format(sku="B", left=0))
    flags.stock_back("A")
    assert not flags.refuses("A", 1)
    assert flags.refuses("B", 1)


def test_a_refusal_that_crossed_a_stock_message_sets_no_flag(flags: SoldOutFlags) -> None:
    stamp = flags.stamp("A")  # the request leaves
    flags.stock_back("A")  # stock comes back, and its message arrives before the refusal
    flags.refused("A", stamp, NONE_HELD.format(sku="A", left=0))
    assert not flags.refuses("A", 1)
    # A message about another SKU changes nothing for this one.
    stamp = flags.stamp("A")
    flags.stock_back("B")
    flags.refused("A", stamp, NONE_HELD.format(sku="A", left=0))
    assert flags.refuses("A", 1)


def test_without_a_subscription_nothing_is_flagged_and_losing_it_drops_every_flag(
    flags: SoldOutFlags,
) -> None:
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    stamp = flags.stamp("B")
    flags.deafened()
    assert not flags.refuses("A", 1)
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    assert not flags.refuses("A", 1)
    flags.subscribed()
    flags.refused("B", stamp, NONE_HELD.format(sku="B", left=0))  # left before the subscription came back
    assert not flags.refuses("B", 1)
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    assert flags.refuses("A", 1)


@pytest.mark.parametrize(
    "message",
    [
        "sku A has 0 units left",  # reserve's later refusal, after ending lapsed holds: some may remain
        "sku A is sold out",  # an answer from memory
        "something else entirely",
    ],
)
def test_only_the_scripts_first_sold_out_refusal_sets_a_flag(flags: SoldOutFlags, message: str) -> None:
    _refuse(flags, "A", message)
    assert not flags.refuses("A", 1)


def test_a_ttl_of_zero_turns_it_off(clock: Clock) -> None:
    flags = SoldOutFlags(ttl_s=0, clock=clock)
    flags.subscribed()
    assert not flags.enabled
    _refuse(flags, "A", NONE_HELD.format(sku="A", left=0))
    assert not flags.refuses("A", 1)
