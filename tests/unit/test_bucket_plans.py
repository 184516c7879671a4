"""The bound of engine/buckets.py's reserve, read without a server: its plan driven by a stand-in that
answers each script call as a worst case would (every bucket has units when read, every reserve is
refused because other shoppers took them first). It must stop after at most 5(B - 1) transfers and
answer OUT_OF_STOCK; and with every bucket empty it refuses after one read of the other buckets, moving
nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from flashsale.engine import EngineConfig, OutOfStock
from flashsale.engine.buckets import TRANSFER_ROUNDS, Plan, reserve
from flashsale.engine.keys import home_bucket
from flashsale.engine.operations import Call, Operations


def _drive(plan: Plan[Any], answer: Any) -> tuple[Any, Counter[str]]:
    calls: Counter[str] = Counter()
    outcome: Any = None
    try:
        while True:
            step = plan.send(outcome)
            steps: list[Call[Any]] = step if isinstance(step, list) else [step]
            answers = []
            for call in steps:
                calls[call.script] += 1
                answers.append(answer(call))
            outcome = answers if isinstance(step, list) else answers[0]
    except StopIteration as done:
        return done.value, calls
    except OutOfStock as refusal:
        return refusal, calls


@pytest.mark.parametrize("buckets", [2, 4, 16])
def test_a_reserve_refused_again_and_again_stops_after_five_rounds_of_at_most_b_minus_one_transfers(
    buckets: int,
) -> None:
    ops = Operations(EngineConfig())
    home = ops.keys.for_bucket("HOT", home_bucket("alice", buckets)).sku("HOT")

    def answer(call: Call[Any]) -> Any:
        if call.script == "bucket_stock":
            return (0, -1, 0) if call.keys[0] == home else (5, -1, 0)  # the others have units when read...
        if call.script == "transfer_out":
            return (1, 1_796_000_000_000)
        if call.script == "reserve":
            return OutOfStock("sku HOT has 0 units left; none is held")  # ...and others always win them
        return 1

    outcome, calls = _drive(reserve(ops, "HOT", "alice", 1, None, None, buckets), answer)
    assert isinstance(outcome, OutOfStock)
    assert calls["transfer_out"] == TRANSFER_ROUNDS * (buckets - 1) == 5 * (buckets - 1)
    # The home bucket's refusal says what it holds: each round reads only the others.
    assert calls["bucket_stock"] == TRANSFER_ROUNDS * (buckets - 1)


def test_with_every_bucket_empty_a_reserve_refuses_after_one_read_and_moves_nothing() -> None:
    ops = Operations(EngineConfig())

    def answer(call: Call[Any]) -> Any:
        if call.script == "bucket_stock":
            return (0, 1500 if call.keys[0].startswith("fs:{p") else -1, 0)
        if call.script == "reserve":
            return OutOfStock("sku HOT has 0 units left; none is held")
        raise AssertionError(f"{call.script} was called")

    outcome, calls = _drive(reserve(ops, "HOT", "alice", 1, None, None, 4), answer)
    assert isinstance(outcome, OutOfStock)
    assert (
        str(outcome) == "sku HOT has 0 units left; the first hold ends in 1500 ms"
    )  # api/soldout.py reads it
    assert calls == Counter({"reserve": 1, "bucket_stock": 3})  # a refusal costs B script calls


def test_units_on_their_way_between_buckets_are_read_again_rather_than_called_sold_out() -> None:
    ops = Operations(EngineConfig())
    reads = Counter[int]()

    def answer(call: Call[Any]) -> Any:
        if call.script == "bucket_stock":
            reads["n"] += 1
            return (
                0,
                -1,
                2 if reads["n"] <= 3 else 0,
            )  # first round: 2 units moving out of each other bucket
        if call.script == "reserve":
            return OutOfStock("sku HOT has 0 units left; none is held")
        raise AssertionError(f"{call.script} was called")

    outcome, calls = _drive(reserve(ops, "HOT", "alice", 1, None, None, 4), answer)
    assert isinstance(outcome, OutOfStock)
    # Read again while units move; then once more with the home bucket (filled meanwhile?); then sold out.
    assert calls == Counter({"reserve": 1, "bucket_stock": 3 + 3 + 4})
