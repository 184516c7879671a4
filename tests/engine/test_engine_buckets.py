"""A hot SKU's stock split into buckets on different partitions (engine/buckets.py): the total stays exact,
the per-user limit stays exact, no shopper hears OUT_OF_STOCK while another bucket had a unit, and a
transfer cut at any step loses and doubles nothing."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from engine_checks import all_events
from flashsale.engine import Engine, FlashSaleError, OutOfStock, Reservation, SaleSettings
from flashsale.engine.keys import home_bucket, new_transfer_id

BUYERS = 1000
UNITS = 100


def _bucket_counters(engine: Engine, sku: str, buckets: int) -> list[dict[str, int]]:
    rows = []
    for b in range(buckets):
        values = engine.redis.hmget(
            engine.keys.for_bucket(sku, b).sku(sku), ["total", "available", "reserved", "sold", "moved"]
        )
        rows.append(
            dict(
                zip(
                    ["total", "available", "reserved", "sold", "moved"],
                    [int(v or 0) for v in values],
                    strict=True,
                )
            )
        )
    return rows


def _moving(engine: Engine, sku: str, buckets: int) -> int:
    """Units withdrawn and not yet deposited: ledger entries without a receipt."""
    units = 0
    for b in range(buckets):
        giver = engine.keys.for_bucket(sku, b)
        for tid, record in engine.redis.hgetall(giver.transfers_out()).items():
            name, to, n, _at = str(record).split(" ")
            receiver = engine.keys.for_bucket(name, int(to))
            if name == sku and not engine.redis.hexists(receiver.transfers_in(), tid):
                units += int(n)
    return units


def assert_total_exact(engine: Engine, sku: str, buckets: int, total: int) -> None:
    """Per bucket: total + moved == available + reserved + sold, none negative; per SKU: the buckets'
    units plus those moving add up to the total."""
    rows = _bucket_counters(engine, sku, buckets)
    for b, row in enumerate(rows):
        assert min(row["available"], row["reserved"], row["sold"]) >= 0, (b, row)
        assert row["total"] + row["moved"] == row["available"] + row["reserved"] + row["sold"], (b, row)
        assert b == 0 or row["total"] == 0, (b, row)
    units = sum(r["available"] + r["reserved"] + r["sold"] for r in rows)
    assert units + _moving(engine, sku, buckets) == total, rows
    sale = engine.get_sale(sku)
    assert sale.total == total
    assert sale.buckets == buckets
    assert sale.available + sale.reserved + sale.sold + sale.moving == total


Timeline = dict[int, list[tuple[int, int]]]  # bucket -> [(at ms, available after)], from the event log


def _timeline(engine: Engine, sku: str, buckets: int) -> Timeline:
    timeline: Timeline = defaultdict(list)
    for b in range(buckets):
        available = 0
        for e in all_events(engine, [engine.keys.for_bucket(sku, b).index]):
            if e.sku != sku:
                continue
            available += {
                "sale_loaded": e.delta or 0,
                "reserved": -(e.quantity or 0),
                "transferred_out": -(e.quantity or 0),
                "transferred_in": e.quantity or 0,
            }.get(e.type, 0)
            timeline[b].append((e.at, available))
    return timeline


def _stocked_through(timeline: Timeline, buckets: int, start_ms: int, end_ms: int) -> list[int]:
    """The buckets that, by the event log, had a unit available through the whole of [start, end]."""
    stocked = []
    for b in range(buckets):
        before = [a for at, a in timeline[b] if at < start_ms - 1]
        level = before[-1] if before else 0
        during = [a for at, a in timeline[b] if start_ms - 1 <= at <= end_ms + 1]
        if level > 0 and all(a > 0 for a in during):
            stocked.append(b)
    return stocked


def _race(engine: Engine, sku: str, users: list[str]) -> list[tuple[Reservation | Exception, int, int]]:
    start = threading.Barrier(200)

    def buy(n: int) -> tuple[Reservation | Exception, int, int]:
        if n < 200:
            start.wait()
        began = int(time.time() * 1000)
        try:
            outcome: Reservation | Exception = engine.reserve(sku, users[n])
        except FlashSaleError as error:
            outcome = error
        return outcome, began, int(time.time() * 1000)

    with ThreadPoolExecutor(max_workers=200) as pool:
        return list(pool.map(buy, range(BUYERS)))


def _buyers(buckets: int, skewed: bool) -> list[str]:
    """A thousand user ids: spread over the home buckets, or all homed on bucket 0 (every unit of the
    other buckets must then move to it)."""
    if not skewed:
        return [f"buyer-{n}" for n in range(BUYERS)]
    ids = (f"buyer-{n}" for n in range(10 * BUYERS * buckets))
    return [u for u in ids if home_bucket(u, buckets) == 0][:BUYERS]


@pytest.mark.cluster
@pytest.mark.parametrize(("buckets", "skewed"), [(1, False), (4, False), (16, False), (4, True), (16, True)])
def test_a_thousand_buyers_get_exactly_the_hundred_units_of_a_bucketed_sku(
    engine: Engine, buckets: int, skewed: bool
) -> None:
    sku = f"HOTB-{buckets}"
    sale = engine.load_sale(SaleSettings(sku=sku, total=UNITS), buckets=buckets)
    assert (sale.total, sale.available, sale.buckets) == (UNITS, UNITS, buckets)
    assert_total_exact(engine, sku, buckets, UNITS)

    outcomes = _race(engine, sku, _buyers(buckets, skewed))
    won = [o for o, _, _ in outcomes if isinstance(o, Reservation)]
    lost = [(o, began, ended) for o, began, ended in outcomes if not isinstance(o, Reservation)]
    assert len(won) == UNITS
    assert len({r.id for r in won}) == UNITS
    assert all(type(o) is OutOfStock for o, _, _ in lost), {type(o).__name__ for o, _, _ in lost}
    sale = engine.get_sale(sku)
    assert (sale.total, sale.available, sale.reserved, sale.sold, sale.moving) == (UNITS, 0, UNITS, 0, 0)
    assert_total_exact(engine, sku, buckets, UNITS)
    # Each hold is on its owner's home bucket (its id names that bucket's partition).
    for r in won:
        assert r.id.startswith(f"rsv_{engine.keys.for_bucket(sku, home_bucket(r.user, buckets)).index}_")
    # No refusal while a bucket had a unit all through the request, by the event log.
    timeline = _timeline(engine, sku, buckets)
    unfair = [
        (began, ended, stocked)
        for _, began, ended in lost
        if (stocked := _stocked_through(timeline, buckets, began, ended))
    ]
    assert not unfair, unfair[:5]


@pytest.mark.cluster
def test_the_per_user_limit_holds_across_buckets_under_concurrent_double_clicks(engine: Engine) -> None:
    sku = "LIMB"
    engine.load_sale(SaleSettings(sku=sku, total=1000, per_user_limit=2), buckets=4)
    users = [f"clicker-{n}" for n in range(50)]

    def click(user: str) -> Reservation | Exception:
        try:
            return engine.reserve(sku, user)
        except FlashSaleError as error:
            return error

    with ThreadPoolExecutor(max_workers=150) as pool:
        outcomes = list(pool.map(click, [u for u in users for _ in range(3)]))
    won: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        if isinstance(outcome, Reservation):
            won[outcome.user] += outcome.quantity
    assert all(won[u] == 2 for u in users), dict(won)
    assert sum(won.values()) == 100
    for u in users:
        counts = engine.user_counts(sku, u)
        assert (counts.held, counts.purchased) == (2, 0)
    assert_total_exact(engine, sku, 4, 1000)


@pytest.mark.parametrize("cut_after", ["transfer_out", "transfer_in", "nothing"])
def test_a_transfer_cut_after_any_step_is_finished_by_the_sweeper_exactly_once(
    engine: Engine, cut_after: str
) -> None:
    sku = "CUTB"
    engine.load_sale(SaleSettings(sku=sku, total=40), buckets=4)
    assert [r["available"] for r in _bucket_counters(engine, sku, 4)] == [10, 10, 10, 10]
    giver = engine.keys.for_bucket(sku, 2)
    tid = new_transfer_id(giver)
    units, at = engine._run(engine.ops.transfer_out(sku, 2, tid, 1, 7))
    assert units == 7
    assert engine._run(engine.ops.transfer_out(sku, 2, tid, 1, 7)) == (7, at)  # a repeat withdraws nothing
    if cut_after != "transfer_out":
        assert engine._run(engine.ops.transfer_in(sku, 1, tid, 2, units, at, 10_000)) == 7
    if cut_after == "nothing":
        engine._run(engine.ops.transfer_done(giver.transfers_out(), tid))
    assert_total_exact(engine, sku, 4, 40)
    # The sweeper finishes what is older than its grace (0 here), every step at most once.
    for _ in range(2):
        engine.finish_transfers(giver.index, grace_ms=0)
    assert engine.redis.hlen(giver.transfers_out()) == 0
    assert [r["available"] for r in _bucket_counters(engine, sku, 4)] == [10, 17, 3, 10]
    assert_total_exact(engine, sku, 4, 40)
    # A deposit the caller sends too late is refused and left to the sweeper.
    tid = new_transfer_id(giver)
    units, at = engine._run(engine.ops.transfer_out(sku, 2, tid, 1, 1))
    with pytest.raises(FlashSaleError, match="older than"):
        engine._run(engine.ops.transfer_in(sku, 1, tid, 2, units, at - 20_000, 10_000))
    engine.finish_transfers(giver.index, grace_ms=0)
    assert [r["available"] for r in _bucket_counters(engine, sku, 4)] == [10, 18, 2, 10]
    assert_total_exact(engine, sku, 4, 40)


def test_buckets_are_fixed_once_a_sale_exists_and_settings_reach_every_bucket(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="FIXB", total=8), buckets=4)
    with pytest.raises(FlashSaleError, match="buckets is fixed"):
        engine.load_sale(SaleSettings(sku="FIXB", total=8), buckets=2)
    engine.load_sale(SaleSettings(sku="FIXB", paused=True))
    assert all(engine.bucket_sales("FIXB")[b].paused for b in range(4))
    with pytest.raises(FlashSaleError):
        engine.reserve("FIXB", "someone")
    engine.load_sale(SaleSettings(sku="FIXB", paused=False, total=20))
    sale = engine.get_sale("FIXB")
    assert (sale.total, sale.available, sale.buckets) == (20, 20, 4)
    assert engine.restock("FIXB", -15).available == 5  # gathers units into bucket 0 first
    assert_total_exact(engine, "FIXB", 4, 5)
    assert [s.sku for s in engine.list_sales()] == ["FIXB"]


@pytest.mark.cluster
def test_a_lapsed_hold_in_another_bucket_gives_its_unit_to_a_shopper_whose_bucket_is_empty(
    engine: Engine,
) -> None:
    sku = "LAPSEB"
    engine.load_sale(SaleSettings(sku=sku, total=2, reservation_ttl_ms=1000), buckets=2)
    homed = {b: [u for u in (f"lapse-{n}" for n in range(200)) if home_bucket(u, 2) == b] for b in (0, 1)}
    buyer, holder, late = homed[0][0], homed[1][0], homed[0][1]
    bought = engine.reserve(sku, buyer)
    engine.confirm(engine.begin_checkout(bought.id, buyer, "card").id, buyer)  # bucket 0: nothing left
    held = engine.reserve(sku, holder)  # bucket 1's unit, held until it lapses
    with pytest.raises(OutOfStock):
        engine.reserve(sku, late)
    time.sleep(1.1)
    won = engine.reserve(sku, late)  # no sweeper ran: the withdrawal ended the lapsed hold first
    assert won.user == late
    assert engine.get_reservation(held.id).status == "EXPIRED"
    sale = engine.get_sale(sku)
    assert (sale.available, sale.reserved, sale.sold, sale.moving) == (0, 1, 1, 0)
    assert_total_exact(engine, sku, 2, 2)


@pytest.mark.cluster
def test_when_buyers_barely_outnumber_the_units_every_unit_is_sold_wherever_it_was(engine: Engine) -> None:
    """150 buyers, all homed on bucket 0, for 120 units spread over 4 buckets: the units must move to them
    and every one be sold (a shopper who moved units takes them in the same step as the deposit)."""
    sku, buckets = "FAIRB", 4
    engine.load_sale(SaleSettings(sku=sku, total=120), buckets=buckets)
    users = _buyers(buckets, skewed=True)[:150]

    def buy(user: str) -> tuple[Reservation | Exception, int, int]:
        began = int(time.time() * 1000)
        try:
            outcome: Reservation | Exception = engine.reserve(sku, user)
        except FlashSaleError as error:
            outcome = error
        return outcome, began, int(time.time() * 1000)

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(buy, users))
    won = [o for o, _, _ in outcomes if isinstance(o, Reservation)]
    assert len(won) == 120
    lost = [(o, began, ended) for o, began, ended in outcomes if not isinstance(o, Reservation)]
    assert all(type(o) is OutOfStock for o, _, _ in lost)
    timeline = _timeline(engine, sku, buckets)
    unfair = [(b, e, s) for _, b, e in lost if (s := _stocked_through(timeline, buckets, b, e))]
    assert not unfair, unfair[:5]
    assert_total_exact(engine, sku, buckets, 120)
