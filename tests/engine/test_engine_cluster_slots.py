"""Redis Cluster safety: every key one script call touches lives in one hash slot. Both the keys passed in
KEYS and the keys the scripts build themselves from the partition prefix in ARGV (reservations, orders,
SKU hashes, user counts, holds, deadlines) — the latter checked by diffing the whole keyspace around
each real call."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from engine_checks import keyspace, sku_in_partition
from flashsale.engine import Engine, EngineConfig, SaleSettings
from flashsale.engine.models import WaitingRoom
from flashsale.engine.operations import Call, Operations, RateLimit
from redis.crc import key_slot


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


def _touched(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_the_keys_the_scripts_build_themselves_share_the_slot_of_the_call(graceless_engine: Engine) -> None:
    engine = graceless_engine
    skus = [sku_in_partition(p, stem="SLOT") for p in (0, 5, 11)]
    touched_by: dict[str, set[str]] = {}

    def run(name: str, sku: str, call: Callable[[], Any]) -> Any:
        before = keyspace(engine.redis)
        try:
            result = call()
        finally:
            touched = _touched(before, keyspace(engine.redis))
            expected = _slot(engine.keys.for_sku(sku).tag)
            strays = sorted(k for k in touched if _slot(k) != expected)
            assert not strays, f"{name} on {sku} wrote outside its slot: {strays}"
            touched_by.setdefault(name, set()).update(touched)
        return result

    held = {}
    for sku in skus:
        run(
            "load_sale",
            sku,
            lambda sku=sku: engine.load_sale(SaleSettings(sku=sku, total=4, reservation_ttl_ms=1000)),
        )
        run("restock", sku, lambda sku=sku: engine.restock(sku, 4))
        r1 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "alice", idempotency_key="k"))
        o1 = run(
            "begin_checkout",
            sku,
            lambda r1=r1: engine.begin_checkout(r1.id, "alice", "card", idempotency_key="k"),
        )
        run("fail_checkout", sku, lambda o1=o1: engine.fail_checkout(o1.id, "alice", "DECLINED"))
        o2 = run("begin_checkout", sku, lambda r1=r1: engine.begin_checkout(r1.id, "alice", "card"))
        run("confirm", sku, lambda o2=o2: engine.confirm(o2.id, "alice", "tx", idempotency_key="k"))
        run("cancel_order", sku, lambda o2=o2: engine.cancel_order(o2.id, "alice"))
        r2 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "bob"))
        o3 = run("begin_checkout", sku, lambda r2=r2: engine.begin_checkout(r2.id, "bob", "card"))
        run("confirm", sku, lambda o3=o3: engine.confirm(o3.id, "bob", "tx"))
        run("fulfil_order", sku, lambda o3=o3: engine.fulfil_order(o3.id))
        r3 = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "carol"))
        run("release", sku, lambda r3=r3: engine.release(r3.id, "carol"))
        # Holds left to lapse: one plain, one with an abandoned checkout, one to end by its own checkout.
        plain = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "dave"))
        paying = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "erin"))
        run("begin_checkout", sku, lambda paying=paying: engine.begin_checkout(paying.id, "erin", "card"))
        late = run("reserve", sku, lambda sku=sku: engine.reserve(sku, "frank"))
        held[sku] = (plain, paying, late)
    time.sleep(1.05)
    for sku, (_plain, _paying, late) in held.items():
        run(
            "begin_checkout",
            sku,
            lambda late=late: _refused(lambda: engine.begin_checkout(late.id, "frank", "c")),
        )
        run("reserve", sku, lambda sku=sku: engine.reserve(sku, "gina"))  # lazy expiry of the other two
        run("expire", sku, lambda sku=sku: engine.expire(engine.keys.for_sku(sku).index))
        run("noop", sku, lambda sku=sku: engine.noop(sku))
        # A waiting room: its settings, a join, a step of its admitter, a reservation with an admission.
        run("set_waiting_room", sku, lambda sku=sku: engine.set_waiting_room(sku, WaitingRoom()))
        run("queue_join", sku, lambda sku=sku: engine.join_queue(sku, "hank", rate=RateLimit(5, 10)))
        engine.redis.set(engine.keys.for_sku(sku).admitter_lease(sku), "w")
        run("queue_admit", sku, lambda sku=sku: engine.admit(sku, "w"))
        run("queue_status", sku, lambda sku=sku: engine.queue_status(sku, "hank", rate=RateLimit(5, 10)))
        run("reserve", sku, lambda sku=sku: engine.reserve(sku, "hank", rate=RateLimit(5, 10)))
    assert {_plain.id for _plain, _, _ in held.values()}  # the scenario did hold units

    # Every state-changing script wrote something (so the checks above had something to judge) ...
    for name in ("load_sale", "restock", "reserve", "begin_checkout", "fail_checkout", "confirm"):
        assert touched_by[name], name
    for name in ("cancel_order", "fulfil_order", "release"):
        assert touched_by[name], name
    kinds = {k.split(":")[2] for k in touched_by["reserve"]}
    assert {"sku", "holds", "open", "events", "idem"} <= kinds
    assert "order" in {k.split(":")[2] for k in touched_by["reserve"] | touched_by["expire"]}
    # ... and every key in Redis, grouped by hash tag, is in the slot of its tag's partition.
    by_tag: dict[str, set[int]] = {}
    for key in keyspace(engine.redis).keys() - {engine.keys.layout()}:  # the layout record has its own
        tag = key[key.index("{") : key.index("}") + 1]
        by_tag.setdefault(tag, set()).add(_slot(key))
    assert set(by_tag) == {"{" + f"p{engine.keys.for_sku(s).index}" + "}" for s in skus}
    assert all(len(slots) == 1 for slots in by_tag.values()), by_tag


def _refused(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as error:
        return type(error).__name__
    raise AssertionError("expected a refusal")
