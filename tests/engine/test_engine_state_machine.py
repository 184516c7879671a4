"""Random sequences of every engine operation against a small pure-Python model of the rules.

After every step Redis must equal the model: each SKU's counters and settings, each user's held and
purchased units, each reservation's and order's status, and the number of events of each type (every state
change emits exactly one). Time is real: holds last 1 second (the shortest TTL a sale may have) and one
rule waits for the earliest deadline to pass, so the sweeper, lazy expiry in reserve, and abandoned
checkouts all happen through the scripts themselves. The model judges expiry against Redis's clock read
just before each call; a call is only made when no deadline falls within a safety margin of that instant,
so whether a hold had lapsed when the script ran is never a guess.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from engine_checks import check_partition, read_partition, sku_in_partition
from flashsale.engine import (
    Engine,
    EngineConfig,
    FlashSaleError,
    Order,
    Reservation,
    Sale,
    SaleSettings,
    UserCounts,
    partition_of,
)
from flashsale.engine.keys import new_reservation_id
from flashsale.engine.models import from_hash, reservation_from_reserve
from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

TTL_MS = 1000
GRACE_MS = 200
MARGIN_MS = 80  # no deadline may fall this close after the clock reading a call is judged by
LIMITS = {"SM-A": 1, "SM-B": 2, sku_in_partition(partition_of("SM-A", 16), stem="SM-A"): 2}
SKUS = sorted(LIMITS)
PARTITIONS = sorted({partition_of(sku, 16) for sku in SKUS})
USERS = ("u1", "u2", "u3")
UNKNOWN_RESERVATION = f"rsv_{PARTITIONS[0]}_{'0' * 32}"
UNKNOWN_ORDER = f"ord_{PARTITIONS[0]}_{'0' * 32}"
KEYS = (None, None, "k1", "k2")
# Examples per run: fewer on the cluster variant (the same rules, through the cluster clients).
EXAMPLES, CLUSTER_EXAMPLES = 30, 10


@dataclass
class SkuModel:
    limit: int
    total: int = 0
    available: int = 0
    reserved: int = 0
    sold: int = 0
    paused: bool = False


@dataclass
class HoldModel:
    id: str
    sku: str
    user: str
    quantity: int
    expires_at: int
    status: str = "RESERVED"
    order_id: str | None = None
    pay_until: int | None = None

    @property
    def paying(self) -> bool:
        return self.status == "RESERVED" and self.pay_until is not None

    @property
    def deadline(self) -> int:
        return self.pay_until if self.paying and self.pay_until is not None else self.expires_at


@dataclass
class OrderModel:
    id: str
    reservation_id: str
    sku: str
    user: str
    quantity: int
    status: str = "PENDING"


@dataclass
class Model:
    """The rules of ARCHITECTURE.md and the script headers, written plainly."""

    skus: dict[str, SkuModel] = field(default_factory=dict)
    held: Counter[tuple[str, str]] = field(default_factory=Counter)
    purchased: Counter[tuple[str, str]] = field(default_factory=Counter)
    holds: dict[str, HoldModel] = field(default_factory=dict)
    orders: dict[str, OrderModel] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    # First answers by (operation, sku/reservation/order, user, idempotency key): an entity or an error code.
    answers: dict[tuple[str, str, str, str], object] = field(default_factory=dict)

    def active(self) -> list[HoldModel]:
        return [h for h in self.holds.values() if h.status == "RESERVED"]

    def end_hold(self, hold: HoldModel, status: str, kind: str) -> None:
        sku = self.skus[hold.sku]
        sku.reserved -= hold.quantity
        sku.available += hold.quantity
        self.held[(hold.sku, hold.user)] -= hold.quantity
        if hold.paying and hold.order_id is not None:
            self.orders[hold.order_id].status = "FAILED"  # an abandoned payment
        hold.status = status
        hold.pay_until = None
        self.events[kind] += 1

    def expire_due(self, holds: list[HoldModel], now: int, limit: int) -> int:
        due = sorted((h for h in holds if h.deadline <= now), key=lambda h: (h.deadline, h.id))[:limit]
        for hold in due:
            self.end_hold(hold, "EXPIRED", "expired")
        return len(due)


def _code(call: object) -> object:
    """Runs a call; its result, or the code of the engine refusal it raised."""
    assert callable(call)
    try:
        return call()
    except FlashSaleError as error:
        return error.code


@pytest.mark.slow
@pytest.mark.cluster
def test_random_operation_sequences_keep_redis_equal_to_the_model(redis_url: str, on_cluster: bool) -> None:
    engine = Engine.from_url(
        redis_url, EngineConfig(payment_grace_ms=GRACE_MS), max_connections=4, cluster=on_cluster
    )
    engine.load_scripts()
    try:
        run_state_machine_as_test(
            lambda: EngineMatchesModel(engine),
            settings=settings(
                max_examples=CLUSTER_EXAMPLES if on_cluster else EXAMPLES,
                stateful_step_count=40,
                deadline=None,
                # No shrinking and no example database: outcomes depend on real time, so a replay may
                # take another path, and shrinking would blow the suite's time budget. A failure prints
                # its whole sequence of steps, with the draws, which is enough to reproduce it by hand.
                database=None,
                phases=(Phase.explicit, Phase.reuse, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        engine.close()


class EngineMatchesModel(RuleBasedStateMachine):
    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        engine.redis.flushall()  # a fresh keyspace per example (the scripts stay loaded)
        self.model = Model()
        self.waited = False

    # -- time ---------------------------------------------------------------------------------------------
    def _clock(self) -> int:
        seconds, micros = self.engine.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _settled_clock(self) -> int:
        """Redis's time, read when no active deadline lies just ahead of it (waiting a little if one does)."""
        while True:
            now = self._clock()
            near = [h.deadline for h in self.model.active() if now < h.deadline <= now + MARGIN_MS]
            if not near:
                return now
            time.sleep((max(near) - now + 2) / 1000)

    def _timed(self, call: object) -> tuple[int, object]:
        """Runs a call that judges deadlines; the clock reading it is judged by, and its outcome."""
        now = self._settled_clock()
        deadlines = [h.deadline for h in self.model.active()]
        outcome = _code(call)
        after = self._clock()
        # A call slower than the margin makes a lapse ambiguous: drop the example rather than guess.
        assume(not any(now < d <= after for d in deadlines))
        return now, outcome

    @rule()
    def time_passes_until_the_first_hold_lapses(self) -> None:
        if self.waited or not self.model.active():
            return
        self.waited = True
        first = min(h.deadline for h in self.model.active())
        time.sleep(max(0, first - self._clock() + 5) / 1000)

    # -- sales --------------------------------------------------------------------------------------------
    @initialize(
        totals=st.lists(st.integers(1, 4), min_size=len(SKUS), max_size=len(SKUS)),
        never_wait=st.booleans(),
    )
    def open_the_sales(self, totals: list[int], never_wait: bool) -> None:
        # Waiting for a deadline costs up to a second of real time: only some examples may do it, once.
        self.waited = never_wait
        for sku, total in zip(SKUS, totals, strict=True):
            self._load_sale(sku, total, paused=False)

    # One rule for both ways of changing stock, so they do not crowd out the holds and orders.
    @rule(
        sku=st.sampled_from(SKUS),
        restock=st.booleans(),
        amount=st.integers(-3, 4).filter(bool),
        paused=st.sampled_from([False] * 7 + [True]),
    )
    def load_sale_or_restock(self, sku: str, restock: bool, amount: int, paused: bool) -> None:
        if restock:
            self._restock(sku, amount)
        else:
            self._load_sale(sku, max(0, amount), paused)

    def _load_sale(self, sku: str, total: int, paused: bool) -> None:
        m = self.model
        settings_ = SaleSettings(
            sku=sku, total=total, per_user_limit=LIMITS[sku], reservation_ttl_ms=TTL_MS, paused=paused
        )
        outcome = _code(lambda: self.engine.load_sale(settings_))
        current = m.skus.get(sku) or SkuModel(LIMITS[sku])
        if total < current.reserved + current.sold:
            assert outcome == "INVALID_QUANTITY"
            return
        assert not isinstance(outcome, str), outcome
        current.available += total - current.total
        current.total = total
        current.paused = paused
        m.skus[sku] = current
        m.events["sale_loaded"] += 1

    def _restock(self, sku: str, delta: int) -> None:
        m = self.model
        outcome = _code(lambda: self.engine.restock(sku, delta))
        current = m.skus.get(sku)
        if current is None:
            assert outcome == "NOT_FOUND"
        elif current.available + delta < 0:
            assert outcome == "INVALID_QUANTITY"
        else:
            assert not isinstance(outcome, str), outcome
            current.available += delta
            current.total += delta
            m.events["restocked"] += 1

    # -- holds --------------------------------------------------------------------------------------------
    @rule(
        sku=st.sampled_from(SKUS),
        user=st.sampled_from(USERS),
        quantity=st.sampled_from([1, 1, 2, 3]),
        key=st.sampled_from(KEYS),
    )
    def reserve(self, sku: str, user: str, quantity: int, key: str | None) -> None:
        self._reserve_one(sku, user, quantity, key)

    def _reserve_one(self, sku: str, user: str, quantity: int, key: str | None) -> None:
        m = self.model
        now, outcome = self._timed(lambda: self.engine.reserve(sku, user, quantity, idempotency_key=key))
        if key is not None and ("reserve", sku, user, key) in m.answers:
            assert outcome == m.answers[("reserve", sku, user, key)]
            return
        expected = self._judge_reserve(sku, user, quantity, now)
        if expected is None:
            assert isinstance(outcome, Reservation), outcome
            assert (outcome.sku, outcome.user, outcome.quantity, outcome.status) == (
                sku,
                user,
                quantity,
                "RESERVED",
            )
            assert outcome.expires_at == outcome.created_at + TTL_MS
            assert now <= outcome.created_at
            s = m.skus[sku]
            s.available -= quantity
            s.reserved += quantity
            m.held[(sku, user)] += quantity
            m.holds[outcome.id] = HoldModel(outcome.id, sku, user, quantity, outcome.expires_at)
            m.events["reserved"] += 1
        else:
            assert outcome == expected
        if key is not None and expected != "NOT_FOUND":
            m.answers[("reserve", sku, user, key)] = outcome

    @rule(
        sku=st.sampled_from(SKUS),
        items=st.lists(
            st.tuples(st.sampled_from(USERS), st.sampled_from([1, 1, 2, 3])), min_size=2, max_size=5
        ),
    )
    def reserve_coalesced(self, sku: str, items: list[tuple[str, int]]) -> None:
        """Plain reserves in one reserve_many call, as AsyncEngine coalesces them: each item the call judges
        is judged as reserve would judge it at its place in the order; an item passed on (answer 0) is one
        the fast path could not grant, and is then sent on its own, after the rest (engine/coalescing.py)."""
        m = self.model
        p = self.engine.keys.for_sku(sku)
        calls = [(user, quantity, new_reservation_id(p)) for user, quantity in items]
        now, answers = self._timed(lambda: self.engine._run(self.engine.ops.reserve_many(sku, calls)))
        assert isinstance(answers, list), answers
        assert len(answers) == len(items)
        passed_on = []
        for (user, quantity, rid), answer in zip(calls, answers, strict=True):
            sale = m.skus.get(sku)
            if answer == 0:
                grantable = (
                    sale is not None
                    and not sale.paused
                    and sale.available >= quantity
                    and m.held[(sku, user)] + m.purchased[(sku, user)] + quantity <= sale.limit
                )
                assert not grantable, f"{user} x{quantity} passed on though the fast path could grant it"
                passed_on.append((user, quantity))
                continue
            expected = self._judge_reserve(sku, user, quantity, now)
            if isinstance(answer, str):
                assert expected is None, (answer, expected)
                hold = reservation_from_reserve(sku, user, answer)
                assert hold.id == rid
                assert hold.quantity == quantity
                assert hold.expires_at == hold.created_at + TTL_MS
                assert now <= hold.created_at
                assert sale is not None
                sale.available -= quantity
                sale.reserved += quantity
                m.held[(sku, user)] += quantity
                m.holds[hold.id] = HoldModel(hold.id, sku, user, quantity, hold.expires_at)
                m.events["reserved"] += 1
            else:  # sold out: a negative number (ms to the first deadline) or the OUT_OF_STOCK error
                assert expected == "OUT_OF_STOCK", (answer, expected)
                assert (isinstance(answer, int) and answer < 0) or str(answer).startswith("OUT_OF_STOCK ")
        for user, quantity in passed_on:
            self._reserve_one(sku, user, quantity, None)

    def _judge_reserve(self, sku: str, user: str, quantity: int, now: int) -> str | None:
        """The refusal reserve must give (None: success). Sold out (no unit, no lapsed hold) is answered
        first. A request the limit or the stock would refuse ends the SKU's lapsed holds (at most 16) and
        is judged again; one that can succeed does not."""
        m = self.model
        sale = m.skus.get(sku)
        if sale is None:
            return "NOT_FOUND"
        lapsed = [h for h in m.active() if h.sku == sku and h.deadline <= now]
        if sale.available < quantity and not lapsed:
            return "OUT_OF_STOCK"  # sold out comes first: the answer an API process may give from memory
        if quantity > sale.limit:
            return "INVALID_QUANTITY"
        if sale.paused:
            return "SALE_NOT_ACTIVE"
        held, bought = m.held[(sku, user)], m.purchased[(sku, user)]
        if held + bought + quantity > sale.limit or sale.available < quantity:
            m.expire_due([h for h in m.active() if h.sku == sku], now, 16)
        held, bought = m.held[(sku, user)], m.purchased[(sku, user)]
        if held + bought + quantity > sale.limit:
            return "ALREADY_RESERVED" if held > 0 else "ALREADY_PURCHASED"
        if sale.available < quantity:
            return "OUT_OF_STOCK"
        return None

    # Every draw has the same shape whatever the state, and no rule has a precondition: the state
    # depends on real time and on ids the engine minted, and Hypothesis must be able to walk the same
    # draws again. A rule with nothing to act on calls the engine with an id no one minted instead.
    @staticmethod
    def _pick(data: st.DataObject, preferred: list[str], everything: list[str], label: str) -> str | None:
        """Mostly one of the preferred ids, sometimes any; ids in order of creation; None if none."""
        prefer = data.draw(st.sampled_from([True, True, True, False]), label=f"{label} preferred")
        index = data.draw(st.integers(0, 63), label=f"{label} index")
        pool = preferred if prefer and preferred else everything
        return pool[index % len(pool)] if pool else None

    def _pick_hold(self, data: st.DataObject) -> HoldModel | None:
        """Mostly an active hold, sometimes any reservation (ended ones must be refused)."""
        m = self.model
        rid = self._pick(data, [h.id for h in m.active()], list(m.holds), "reservation")
        return None if rid is None else m.holds[rid]

    def _caller(self, data: st.DataObject, owner: str) -> str:
        """Mostly the owner, sometimes another user."""
        other = next(u for u in USERS if u != owner)
        return owner if data.draw(st.integers(0, 3), label="caller") < 3 else other

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m = self.model
        hold = self._pick_hold(data)
        user = self._caller(data, hold.user if hold else USERS[0])
        if hold is None:  # nothing reserved yet: an id no one minted
            assert _code(lambda: self.engine.release(UNKNOWN_RESERVATION, user)) == "NOT_FOUND"
            return
        now, outcome = self._timed(lambda: self.engine.release(hold.id, user))
        if user != hold.user:
            assert outcome == "FORBIDDEN"
        elif hold.status == "EXPIRED":
            assert outcome == "RESERVATION_EXPIRED"
        elif hold.status != "RESERVED":
            assert outcome == "INVALID_STATE"
        elif now >= hold.deadline:  # its own deadline, or its payment grace
            assert outcome == "RESERVATION_EXPIRED"
            m.end_hold(hold, "EXPIRED", "expired")
        elif hold.paying:
            assert outcome == "CHECKOUT_IN_PROGRESS"
        else:
            assert isinstance(outcome, Reservation), outcome
            assert outcome.status == "CANCELLED"
            m.end_hold(hold, "CANCELLED", "released")

    @rule(sku=st.sampled_from(SKUS), limit=st.integers(1, 3))
    def expire(self, sku: str, limit: int) -> None:
        m = self.model
        partition = partition_of(sku, self.engine.config.partitions)
        now, outcome = self._timed(lambda: self.engine.expire(partition, limit))
        due = [
            h
            for h in m.active()
            if partition_of(h.sku, self.engine.config.partitions) == partition and h.deadline <= now
        ]
        assert outcome == min(limit, len(due))
        # Which of them when fewer may end than are due: up to the limit, SKU by SKU in the partition's
        # catalog order (lua/expire.lua), not by deadline across SKUs. Read back from Redis: ended ones
        # only among the due, as many as it said.
        ended = [h for h in due if self.engine.get_reservation(h.id).status == "EXPIRED"]
        assert len(ended) == outcome
        for hold in ended:
            m.end_hold(hold, "EXPIRED", "expired")

    # -- checkout and orders ------------------------------------------------------------------------------
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def begin_checkout(self, data: st.DataObject, key: str | None) -> None:
        m = self.model
        hold = self._pick_hold(data)
        user = self._caller(data, hold.user if hold else USERS[0])
        if hold is None:  # nothing reserved yet: an id no one minted
            assert _code(lambda: self.engine.begin_checkout(UNKNOWN_RESERVATION, user, "card")) == "NOT_FOUND"
            return
        now, outcome = self._timed(
            lambda: self.engine.begin_checkout(hold.id, user, "card", idempotency_key=key)
        )
        if key is not None and ("checkout", hold.id, user, key) in m.answers:
            assert outcome == m.answers[("checkout", hold.id, user, key)]
            return
        if user != hold.user:
            assert outcome == "FORBIDDEN"
            return
        if hold.status == "EXPIRED":
            expected: str | None = "RESERVATION_EXPIRED"
        elif hold.status != "RESERVED":
            expected = "INVALID_STATE"
        elif now >= hold.deadline:
            expected = "RESERVATION_EXPIRED"
            m.end_hold(hold, "EXPIRED", "expired")
        elif hold.paying:
            expected = "CHECKOUT_IN_PROGRESS"
        else:
            expected = None
        if expected is None:
            assert isinstance(outcome, Order), outcome
            assert (outcome.status, outcome.reservation_id, outcome.quantity) == (
                "PENDING",
                hold.id,
                hold.quantity,
            )
            hold.order_id = outcome.id
            hold.pay_until = max(hold.expires_at, outcome.created_at + GRACE_MS)
            m.orders[outcome.id] = OrderModel(outcome.id, hold.id, hold.sku, hold.user, hold.quantity)
            m.events["checkout_started"] += 1
        else:
            assert outcome == expected
        if key is not None:
            m.answers[("checkout", hold.id, user, key)] = outcome

    def _pick_order(self, data: st.DataObject) -> OrderModel | None:
        """Mostly an order that can still change (PENDING, CONFIRMED), sometimes any."""
        m = self.model
        open_ = [o.id for o in m.orders.values() if o.status in ("PENDING", "CONFIRMED")]
        oid = self._pick(data, open_, list(m.orders), "order")
        return None if oid is None else m.orders[oid]

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def confirm(self, data: st.DataObject, key: str | None) -> None:
        m = self.model
        order = self._pick_order(data)
        user = self._caller(data, order.user if order else USERS[0])
        if order is None:  # no order yet: an id no one minted
            assert _code(lambda: self.engine.confirm(UNKNOWN_ORDER, user, "tx")) == "NOT_FOUND"
            return
        now, outcome = self._timed(lambda: self.engine.confirm(order.id, user, "tx", idempotency_key=key))
        if key is not None and ("confirm", order.id, user, key) in m.answers:
            assert outcome == m.answers[("confirm", order.id, user, key)]
            return
        if user != order.user:
            assert outcome == "FORBIDDEN"
            return
        if order.status != "PENDING":
            assert outcome == "INVALID_STATE"
        elif now >= m.holds[order.reservation_id].deadline:  # a payment after its grace confirms nothing
            assert outcome == "RESERVATION_EXPIRED"
            m.end_hold(m.holds[order.reservation_id], "EXPIRED", "expired")
        else:
            assert isinstance(outcome, Order), outcome
            assert outcome.status == "CONFIRMED"
            hold = m.holds[order.reservation_id]
            hold.status = "CONFIRMED"
            hold.pay_until = None
            order.status = "CONFIRMED"
            s = m.skus[order.sku]
            s.reserved -= order.quantity
            s.sold += order.quantity
            m.held[(order.sku, order.user)] -= order.quantity
            m.purchased[(order.sku, order.user)] += order.quantity
            m.events["confirmed"] += 1
        if key is not None:
            m.answers[("confirm", order.id, user, key)] = outcome

    @rule(data=st.data())
    def fail_checkout(self, data: st.DataObject) -> None:
        m = self.model
        order = self._pick_order(data)
        user = self._caller(data, order.user if order else USERS[0])
        if order is None:  # no order yet: an id no one minted
            assert (
                _code(lambda: self.engine.fail_checkout(UNKNOWN_ORDER, user, "PAYMENT_DECLINED"))
                == "NOT_FOUND"
            )
            return
        outcome = _code(lambda: self.engine.fail_checkout(order.id, user, "PAYMENT_DECLINED"))
        if user != order.user:
            assert outcome == "FORBIDDEN"
        elif order.status != "PENDING":
            assert outcome == "INVALID_STATE"
        else:
            assert isinstance(outcome, Order), outcome
            assert (outcome.status, outcome.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
            order.status = "FAILED"
            hold = m.holds[order.reservation_id]
            hold.order_id = None  # the hold is plainly RESERVED again, until its own deadline
            hold.pay_until = None
            m.events["checkout_failed"] += 1

    @rule(data=st.data(), admin=st.booleans())
    def cancel_order(self, data: st.DataObject, admin: bool) -> None:
        m = self.model
        order = self._pick_order(data)
        user = self._caller(data, order.user if order else USERS[0])
        if order is None:  # no order yet: an id no one minted
            assert _code(lambda: self.engine.cancel_order(UNKNOWN_ORDER, user, admin=admin)) == "NOT_FOUND"
            return
        now, outcome = self._timed(lambda: self.engine.cancel_order(order.id, user, admin=admin))
        if user != order.user and not admin:
            assert outcome == "FORBIDDEN"
        elif order.status == "PENDING" and now >= m.holds[order.reservation_id].deadline:
            assert outcome == "INVALID_STATE"  # its payment grace ran out: the hold expires, the order fails
            m.end_hold(m.holds[order.reservation_id], "EXPIRED", "expired")
        elif order.status == "PENDING":  # the shopper cancels while paying: the hold ends, units back
            assert isinstance(outcome, Order), outcome
            assert outcome.status == "CANCELLED"
            hold = m.holds[order.reservation_id]
            hold.order_id = None
            m.end_hold(hold, "CANCELLED", "checkout_cancelled")
            hold.order_id = order.id
            order.status = "CANCELLED"
        elif order.status != "CONFIRMED":
            assert outcome == "INVALID_STATE"
        else:
            assert isinstance(outcome, Order), outcome
            assert outcome.status == "CANCELLED"
            order.status = "CANCELLED"
            s = m.skus[order.sku]
            s.sold -= order.quantity
            s.available += order.quantity
            m.purchased[(order.sku, order.user)] -= order.quantity
            m.events["order_cancelled"] += 1

    @rule(data=st.data())
    def fulfil_order(self, data: st.DataObject) -> None:
        order = self._pick_order(data)
        if order is None:  # no order yet: an id no one minted
            assert _code(lambda: self.engine.fulfil_order(UNKNOWN_ORDER)) == "NOT_FOUND"
            return
        outcome = _code(lambda: self.engine.fulfil_order(order.id))
        if order.status != "CONFIRMED":
            assert outcome == "INVALID_STATE"
        else:
            assert isinstance(outcome, Order), outcome
            assert outcome.status == "FULFILLED"
            order.status = "FULFILLED"
            self.model.events["order_fulfilled"] += 1

    # -- after every step ---------------------------------------------------------------------------------
    @invariant()
    def redis_equals_the_model(self) -> None:
        m = self.model
        states = [read_partition(self.engine, p) for p in PARTITIONS]
        sales = {sku: sale for state in states for sku, sale in state.sales.items()}
        assert set(sales) == set(m.skus)
        for sku, expected in m.skus.items():
            sale = from_hash(sales[sku], Sale)
            assert (sale.total, sale.available, sale.reserved, sale.sold) == (
                expected.total,
                expected.available,
                expected.reserved,
                expected.sold,
            ), sku
            assert sale.available + sale.reserved + sale.sold == sale.total  # invariant 1
            assert min(sale.available, sale.reserved, sale.sold) >= 0
            assert (sale.paused, sale.per_user_limit) == (expected.paused, expected.limit)
        users = {key: counts for state in states for key, counts in state.users.items()}
        for sku in m.skus:
            for user in USERS:
                counts = from_hash(users.get((sku, user), {}), UserCounts)
                assert (counts.held, counts.purchased) == (m.held[(sku, user)], m.purchased[(sku, user)])
        reservations = {rid: r for state in states for rid, r in state.reservations.items()}
        assert set(reservations) == set(m.holds)
        for hold in m.holds.values():
            stored = reservations[hold.id]
            order_id = None if stored["order_id"] == "-" else stored["order_id"]
            assert (stored["status"], order_id) == (hold.status, hold.order_id), hold
        orders = {oid: o for state in states for oid, o in state.orders.items()}
        assert set(orders) == set(m.orders)
        for order in m.orders.values():
            assert orders[order.id]["status"] == order.status, order
        # Exactly one event per state change; the full cross-check (entities, deadline sets, stream
        # replay == counters, never negative) runs on the same snapshot.
        assert Counter(e.type for state in states for e in state.events) == m.events
        for state in states:
            check_partition(state)
