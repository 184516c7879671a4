"""Redis Cluster safety: every key one script call touches lives in one hash slot, and is one of the call's
KEYS. The keys the scripts build themselves from what they read (a reservation's SKU, an order's hold,
the records and orders of lapsed holds, the idempotency generation of the clock) are checked twice: by
diffing the whole keyspace around each real call, and by scripts that stop at any key not declared."""

from __future__ import annotations

import inspect
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from engine_checks import keyspace, scripts_checking_keys, sku_in_partition
from flashsale.engine import Engine, EngineConfig, SaleSettings
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.keys import new_reservation_id, new_transfer_id
from flashsale.engine.models import WaitingRoom
from flashsale.engine.operations import Call, Operations, RateLimit
from flashsale.engine.scripts import SCRIPT_NAMES, Script
from redis.crc import key_slot
from redis.exceptions import ResponseError


def _slot(key: str) -> int:
    return key_slot(key.encode())


def _calls_of_every_operation(ops: Operations, sku: str) -> dict[str, list[Call[Any]]]:
    p = ops.keys.for_sku(sku)
    rid = f"rsv_{p.index}_0123456789abcdef"
    oid = f"ord_{p.index}_0123456789abcdef"
    return {
        "load_sale": [ops.load_sale(SaleSettings(sku=sku, total=10, name="Thing"))],
        "reserve": [
            ops.reserve(sku, "alice", 1, None),
            ops.reserve(sku, "alice", 2, "retry-key"),
            ops.reserve(sku, "alice", 1, None, RateLimit(5, 10)),
        ],
        "reserve_many": [ops.reserve_many(sku, [("alice", 1, rid), ("bob", 2, rid.replace("0123", "4567"))])],
        "begin_checkout": [
            ops.begin_checkout(rid, "alice", "card", None),
            ops.begin_checkout(rid, "alice", "card", "k"),
        ],
        "confirm": [ops.confirm(oid, "alice", "tx", None), ops.confirm(oid, "alice", "tx", "k")],
        "fail_checkout": [ops.fail_checkout(oid, "alice", "DECLINED")],
        "release": [ops.release(rid, "alice")],
        "expire": [ops.expire(p.index, 100)],
        "cancel_order": [ops.cancel_order(oid, "alice", False), ops.cancel_order(oid, "bob", True)],
        "fulfil_order": [ops.fulfil_order(oid)],
        "restock": [ops.restock(sku, 5)],
        "noop": [ops.noop(sku)],
        "set_waiting_room": [ops.set_waiting_room(sku, WaitingRoom())],
        "queue_join": [ops.queue_join(sku, "alice"), ops.queue_join(sku, "alice", RateLimit(5, 10))],
        "queue_status": [ops.queue_status(sku, "alice"), ops.queue_status(sku, "alice", RateLimit(5, 10))],
        "queue_admit": [ops.queue_admit(sku, "worker-1", 100)],
        # Stock buckets (engine/buckets.py): each call is on one bucket, here bucket 0.
        "bucket_stock": [ops.bucket_stock(sku, 0)],
        "transfer_out": [ops.transfer_out(sku, 0, f"mv_{p.index}_x", 1, 5)],
        "transfer_in": [ops.transfer_in(sku, 0, "mv_3_x", 1, 5, 1, 0)],
        "transfer_done": [ops.transfer_done(p.transfers_out(), "mv_3_x")],
        "transfer_pending": [ops.transfer_pending(p.transfers_out(), "mv_3_x")],
        "transfers_due": [ops.transfers_due(p.transfers_in(), 0)],
    }


def test_the_keys_of_every_operation_hash_to_one_slot() -> None:
    ops = Operations(EngineConfig())
    public = {
        name for name, _ in inspect.getmembers(Operations, inspect.isfunction) if not name.startswith("_")
    }
    for n in range(64):
        sku = f"SKU-{n}"
        calls = _calls_of_every_operation(ops, sku)
        assert set(calls) == public, "an operation of engine/operations.py is not covered here"
        expected = _slot(ops.keys.for_sku(sku).sku(sku))
        for name, variants in calls.items():
            for call in variants:
                assert call.keys, name
                assert {_slot(k) for k in call.keys} == {expected}, (name, call.keys)
                # The prefix the scripts build further keys from carries the same hash tag.
                prefixes = [
                    a for a in call.args if isinstance(a, str) and a.startswith(ops.keys.prefix + ":{")
                ]
                assert all(_slot(a + "x") == expected for a in prefixes), (name, call.args)


def _touched(before: dict[str, Any], after: dict[str, Any], expiring: set[str]) -> set[str]:
    """Keys a call changed. A key with a TTL that is gone after it may just have expired meanwhile (a rate
    bucket lives ~a second), also while the snapshot read it (listed, then its value gone): not counted
    as the call's."""
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return {k for k in changed if k not in expiring or after.get(k, (None, None))[1] not in (None, "none")}


def _expiring(client: Any, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` with a TTL, or already gone (expired since they were read: PTTL -2)."""
    names = list(keys)
    pipe = client.pipeline(transaction=False)
    for key in names:
        pipe.pttl(key)
    return {key for key, ttl in zip(names, pipe.execute(), strict=True) if ttl > 0 or ttl == -2}


def _many(engine: Engine, sku: str, users: list[str], rate: RateLimit | None = None) -> list[Any]:
    """A coalesced call of reserves, as engine/coalescing.py sends it (the sync client does not)."""
    p = engine.keys.for_sku(sku)
    items = [(user, 1, new_reservation_id(p)) for user in users]
    return engine._run(engine.ops.reserve_many(sku, items, rate))


def _every_path(engine: Engine, run: Callable[[str, str, Callable[[], Any]], Any]) -> None:
    """Every script through each of its paths that touches keys: holds made, paid, failed, confirmed,
    cancelled, fulfilled, released; holds lapsing and ended by each script that ends them (with and
    without an order paying for them); repeats of idempotent calls; a waiting room."""
    skus = [sku_in_partition(p, stem="SLOT") for p in (0, 5, 11)]
    held = {}
    for sku in skus:
        run(
            "load_sale",
            sku,
            lambda sku=sku: engine.load_sale(SaleSettings(sku=sku, total=4, reservation_ttl_ms=1000)),
        )
        run("restock", sku, lambda sku=sku: engine.restock(sku, 10))
        r1 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "alice", idempotency_key="k"))
        assert run("reserve", sku, lambda sku=sku: engine.reserve(sku, "alice", idempotency_key="k")) == r1
        o1 = run(
            "begin_checkout",
            sku,
            lambda r1=r1: engine.begin_checkout(r1.id, "alice", "card", idempotency_key="k"),
        )
        run(
            "begin_checkout",
            sku,
            lambda r1=r1: engine.begin_checkout(r1.id, "alice", "card", idempotency_key="k"),
        )
        run("fail_checkout", sku, lambda o1=o1: engine.fail_checkout(o1.id, "alice", "DECLINED"))
        o2 = run("begin_checkout", sku, lambda r1=r1: engine.begin_checkout(r1.id, "alice", "card"))
        run("confirm", sku, lambda o2=o2: engine.confirm(o2.id, "alice", "tx", idempotency_key="k"))
        run("confirm", sku, lambda o2=o2: engine.confirm(o2.id, "alice", "tx", idempotency_key="k"))
        run("cancel_order", sku, lambda o2=o2: engine.cancel_order(o2.id, "alice"))
        r2 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "bob"))
        o3 = run("begin_checkout", sku, lambda r2=r2: engine.begin_checkout(r2.id, "bob", "card"))
        run("confirm", sku, lambda o3=o3: engine.confirm(o3.id, "bob", "tx"))
        run("fulfil_order", sku, lambda o3=o3: engine.fulfil_order(o3.id))
        r3 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "carol"))
        run("release", sku, lambda r3=r3: engine.release(r3.id, "carol"))
        r4 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "ivan"))
        o4 = run("begin_checkout", sku, lambda r4=r4: engine.begin_checkout(r4.id, "ivan", "card"))
        run("cancel_order", sku, lambda o4=o4: engine.cancel_order(o4.id, "ivan"))
        # Holds left to lapse: one plain, one with an abandoned checkout, one to end by its own checkout,
        # and three being paid for, ended by a release, a confirm and a cancel that come too late.
        plain = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "dave"))
        paying = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "erin"))
        run("begin_checkout", sku, lambda paying=paying: engine.begin_checkout(paying.id, "erin", "card"))
        late = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "frank"))
        paid_late = {}
        for user in ("jack", "kate", "liam"):
            hold = run("reserve", sku, lambda sku=sku, user=user: engine.reserve(sku, user))
            order = run("begin_checkout", sku, lambda h=hold, u=user: engine.begin_checkout(h.id, u, "card"))
            paid_late[user] = (hold, order)
        # A SKU of one unit whose lapsed, paid-for hold a refused reserve ends itself (lazy expiry).
        lazy = f"{sku}-LAZY"
        run(
            "load_sale",
            lazy,
            lambda lazy=lazy: engine.load_sale(SaleSettings(sku=lazy, total=1, reservation_ttl_ms=1000)),
        )
        first = run("reserve", lazy, lambda lazy=lazy: engine.reserve(lazy, "mona", idempotency_key="m"))
        run("begin_checkout", lazy, lambda first=first: engine.begin_checkout(first.id, "mona", "card"))
        # Coalesced reserves (engine/coalescing.py) on a SKU of two units: two grants and a sold-out answer
        # read from the holds' indexes (due_first kept), then one from due_first, then (below) lapsed holds.
        many = f"{sku}-MANY"
        while engine.keys.for_sku(many) != engine.keys.for_sku(sku):
            many += "x"
        run(
            "load_sale",
            many,
            lambda many=many: engine.load_sale(SaleSettings(sku=many, total=2, reservation_ttl_ms=1000)),
        )
        answers = run("reserve_many", many, lambda many=many: _many(engine, many, ["oli", "pam", "quin"]))
        assert [type(a) for a in answers] == [str, str, int], answers  # sold out: the first hold ends in ms
        # Held to the users' rate: each item's rate bucket is among the keys.
        rated = run(
            "reserve_many", many, lambda many=many: _many(engine, many, ["oli", "ria"], RateLimit(1, 1))
        )
        assert [type(a) for a in rated] == [int, int], rated
        assert run("reserve_many", many, lambda many=many: _many(engine, many, ["rita", "sam"]))[0] < 0
        held[sku] = (plain, paying, late, paid_late, lazy, many)
    time.sleep(1.05)
    for sku, (_plain, _paying, late, paid_late, lazy, many) in held.items():
        assert run("reserve_many", many, lambda many=many: _many(engine, many, ["tom", "uma"])) == [0, 0]
        run(
            "begin_checkout",
            sku,
            lambda late=late: _refused(lambda: engine.begin_checkout(late.id, "frank", "c")),
        )
        jack, kate, liam = paid_late["jack"], paid_late["kate"], paid_late["liam"]
        run("release", sku, lambda jack=jack: _refused(lambda: engine.release(jack[0].id, "jack")))
        run("confirm", sku, lambda kate=kate: _refused(lambda: engine.confirm(kate[1].id, "kate", "tx")))
        run("cancel_order", sku, lambda liam=liam: _refused(lambda: engine.cancel_order(liam[1].id, "liam")))
        run("reserve", lazy, lambda lazy=lazy: engine.reserve(lazy, "nora", idempotency_key="n"))
        run("reserve", sku, lambda sku=sku: engine.reserve(sku, "gina"))
        run("expire", sku, lambda sku=sku: engine.expire(engine.keys.for_sku(sku).index))
        run("noop", sku, lambda sku=sku: engine.noop(sku))
        # A waiting room: its settings, a join, a step of its admitter, a reservation with an admission.
        run("set_waiting_room", sku, lambda sku=sku: engine.set_waiting_room(sku, WaitingRoom()))
        run("queue_join", sku, lambda sku=sku: engine.join_queue(sku, "hank", rate=RateLimit(5, 10)))
        engine.redis.set(engine.keys.for_sku(sku).admitter_lease(sku), "w")
        run("queue_admit", sku, lambda sku=sku: engine.admit(sku, "w"))
        run("queue_status", sku, lambda sku=sku: engine.queue_status(sku, "hank", rate=RateLimit(5, 10)))
        run("reserve", sku, lambda sku=sku: engine.reserve(sku, "hank", rate=RateLimit(5, 10)))
    assert {_plain.id for _plain, *_ in held.values()}  # the scenario did hold units
    # Stock buckets: each script on one bucket (a bucketed call as a whole spans partitions).
    ops, do = engine.ops, engine._run
    for sku in skus:
        bucketed = f"{sku}-B"
        while engine.keys.for_sku(bucketed) != engine.keys.for_sku(sku):
            bucketed += "x"
        engine.load_sale(SaleSettings(sku=bucketed, total=8), buckets=2)
        run("bucket_stock", sku, lambda b=bucketed: do(ops.bucket_stock(b, 0)))
        ledger = engine.keys.for_bucket(bucketed, 0).transfers_out()
        tid = new_transfer_id(engine.keys.for_bucket(bucketed, 0))
        run("transfer_out", sku, lambda b=bucketed, t=tid: do(ops.transfer_out(b, 0, t, 1, 1)))
        # The deposit into bucket 0 of a transfer from bucket 1, withdrawn outside the check.
        back = new_transfer_id(engine.keys.for_bucket(bucketed, 1))
        units, at = do(ops.transfer_out(bucketed, 1, back, 0, 1))
        deposit = ops.transfer_in(bucketed, 0, back, 1, units, at, 0)
        run("transfer_in", sku, lambda deposit=deposit: do(deposit))
        run("transfer_pending", sku, lambda t=tid, k=ledger: do(ops.transfer_pending(k, t)))
        run("transfers_due", sku, lambda k=ledger: do(ops.transfers_due(k, 0)))
        run("transfer_done", sku, lambda t=tid, k=ledger: do(ops.transfer_done(k, t)))


def test_the_keys_the_scripts_build_themselves_share_the_slot_of_the_call(graceless_engine: Engine) -> None:
    engine = graceless_engine
    touched_by: dict[str, set[str]] = {}

    def run(name: str, sku: str, call: Callable[[], Any]) -> Any:
        before = keyspace(engine.redis)
        expiring = _expiring(engine.redis, before)
        try:
            result = call()
        finally:
            touched = _touched(before, keyspace(engine.redis), expiring)
            expected = _slot(engine.keys.for_sku(sku).tag)
            strays = sorted(k for k in touched if _slot(k) != expected)
            assert not strays, f"{name} on {sku} wrote outside its slot: {strays}"
            touched_by.setdefault(name, set()).update(touched)
        return result

    _every_path(engine, run)

    # Every state-changing script wrote something (so the checks above had something to judge) ...
    for name in ("load_sale", "restock", "reserve", "begin_checkout", "fail_checkout", "confirm"):
        assert touched_by[name], name
    for name in ("cancel_order", "fulfil_order", "release"):
        assert touched_by[name], name
    kinds = {k.split(":")[2] for k in touched_by["reserve"]}
    assert {"sku", "holds", "open", "events", "idem", "r", "order"} <= kinds
    assert {"r", "order"} <= {k.split(":")[2] for k in touched_by["expire"]}
    # ... and every key in Redis, grouped by hash tag, is in the slot of its tag's partition.
    by_tag: dict[str, set[int]] = {}
    for key in keyspace(engine.redis).keys() - {engine.keys.layout()}:  # the layout record has its own
        tag = key[key.index("{") : key.index("}") + 1]
        by_tag.setdefault(tag, set()).add(_slot(key))
    assert {"{" + f"p{p}" + "}" for p in (0, 5, 11)} <= set(by_tag)  # and the partitions of the -LAZY SKUs
    assert all(len(slots) == 1 for slots in by_tag.values()), by_tag


@pytest.mark.parametrize("known", [True, False], ids=["ids-known", "ids-from-another-process"])
def test_every_key_a_script_touches_is_one_of_its_keys(graceless_engine: Engine, known: bool) -> None:
    """Each script stops with UNDECLARED_KEY at a key not in its KEYS (engine_checks.scripts_checking_keys):
    the scenario passing means no path of any script reads or writes a key the call did not declare, which
    Redis Cluster needs to hold a call (ASK, TRYAGAIN) rather than stop it half-way during a migration.
    Run with the SKU of each reservation and order known to the engine (it made them) and unknown (as if
    another process had: each checkout call learns its keys from a NEEDS_KEYS reply)."""
    engine = graceless_engine
    engine.scripts = scripts_checking_keys(engine.scripts)
    engine.load_scripts()
    calls: Counter[str] = Counter()

    def run(name: str, sku: str, call: Callable[[], Any]) -> Any:
        calls[name] += 1
        if not known:
            engine.ops._sku_of.clear()
            engine.ops._order_of.clear()
        return call()

    _every_path(engine, run)
    assert set(calls) == set(SCRIPT_NAMES) - {"lease_renew", "lease_release"}, set(calls) ^ set(SCRIPT_NAMES)


def test_the_key_check_stops_a_script_at_an_undeclared_key(graceless_engine: Engine) -> None:
    engine = graceless_engine
    source = "redis.call('SET', KEYS[1], 'x')\nreturn redis.call('GET', KEYS[1] .. ':other')"
    (checked,) = scripts_checking_keys({"probe": Script("probe", source, "")}).values()
    key = engine.keys.partition(3).tag + "probe"
    with pytest.raises(ResponseError, match="UNDECLARED_KEY GET " + re.escape(key + ":other")):
        engine.redis.eval(checked.source, 1, key)


def test_a_call_sent_by_a_process_whose_clock_is_in_another_idempotency_generation_is_sent_again(
    redis_url: str, on_cluster: bool
) -> None:
    """The client names the idempotency generations by its own clock; when Redis's clock says another, the
    script asks for those keys (NEEDS_KEYS, nothing written) and the engine sends the call again."""
    ttl = 60_000
    engine = Engine.from_url(redis_url, EngineConfig(idempotency_ttl_ms=ttl), cluster=on_cluster)
    engine.scripts = scripts_checking_keys(engine.scripts)
    engine.load_scripts()
    engine.load_sale(SaleSettings(sku="SKEW", total=5))
    sent: list[tuple[str, ...]] = []
    plain = engine.redis.evalsha

    def counting(sha: str, count: int, *keys_and_args: Any) -> Any:
        sent.append(tuple(keys_and_args[:count]))
        return plain(sha, count, *keys_and_args)

    engine.redis.evalsha = counting  # type: ignore[method-assign]
    ahead = Engine.from_url(redis_url, EngineConfig(idempotency_ttl_ms=ttl), cluster=on_cluster)
    ahead.scripts = engine.scripts
    ahead.redis.evalsha = counting  # type: ignore[method-assign]
    ahead.ops.now_ms = lambda: int(time.time() * 1000) + 2 * ttl  # two generations ahead of Redis
    first = ahead.reserve("SKEW", "olga", idempotency_key="k")
    assert len(sent) == 2, sent  # sent once more ...
    assert len(sent[1]) == len(sent[0]) + 2, sent  # ... with the two generations of Redis's clock
    sent.clear()
    assert engine.reserve("SKEW", "olga", idempotency_key="k") == first  # found in Redis's generation
    assert len(sent) == 1, sent
    assert ahead.reserve("SKEW", "olga", idempotency_key="k") == first
    assert engine.get_sale("SKEW").reserved == 1
    ahead.close()
    engine.close()


def _refused(call: Callable[[], Any]) -> str:
    try:
        call()
    except FlashSaleError as error:  # an engine refusal; anything else fails the test
        return type(error).__name__
    raise AssertionError("expected a refusal")
