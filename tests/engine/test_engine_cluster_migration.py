"""A partition's slot moves to another master while reservations run (the resharding Redis Cluster does
with CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE of its keys, SETSLOT NODE): every call is answered,
nothing acknowledged is lost, no script runs twice, and the invariants hold afterwards.

While the slot migrates, a reserve (which creates a key) is refused with ASK on the old owner and TRYAGAIN
on the new one until the last key has moved: the clients wait that out. Reads follow ASK. After the move
the old owner answers MOVED and the clients learn the new map. Runs on its own cluster: the session's
keeps its layout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from engine_checks import all_events, check_invariants, sku_in_partition
from flashsale.engine import AsyncEngine, Engine, EngineConfig, Reservation, SaleSettings
from flashsale.engine.cluster import slot_of

from flashsale.launcher import RedisCluster, RedisClusterNode

MOVING = 5  # the partition whose slot moves
BATCH = 100  # keys per MIGRATE, with a pause after each: the migration lasts a good part of a second


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[RedisCluster]:
    with RedisCluster(3) as cluster:
        yield cluster


def _node_id(node: RedisClusterNode) -> str:
    client = node.client(decode_responses=True)
    try:
        return str(client.execute_command("CLUSTER", "MYID"))
    finally:
        client.close()


def _migrate_slot(
    cluster: RedisCluster, slot: int, source: RedisClusterNode, target: RedisClusterNode, log: list[str]
) -> None:
    """The steps of ``redis-cli --cluster reshard`` for one slot, with a pause between batches."""
    source_id, target_id = _node_id(source), _node_id(target)
    src, dst = source.client(decode_responses=True), target.client(decode_responses=True)
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        log.append("migrating")
        moved, started = 0, time.monotonic()
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, BATCH):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(0.01)
        log.append(f"moved {moved} keys in {time.monotonic() - started:.2f} s")
        for node in cluster.masters:  # the new owner first, as redis-cli does
            client = node.client()
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            finally:
                client.close()
        log.append("done")
    finally:
        src.close()
        dst.close()


async def test_a_partition_moving_to_another_node_under_load_loses_nothing_and_runs_nothing_twice(
    own_cluster: RedisCluster,
) -> None:
    cluster = own_cluster
    for node in cluster.masters:
        client = node.client()
        client.flushall()
        client.close()
    admin = Engine.from_url(cluster.url, EngineConfig(), cluster=True, max_connections=8)
    admin.load_scripts()
    engine = AsyncEngine.from_url(cluster.url, EngineConfig(), cluster=True, max_connections=16)
    await engine.load_scripts()

    hot = sku_in_partition(MOVING, stem="MOVE")
    other = sku_in_partition(MOVING + 1, stem="STAY")
    for sku in (hot, other):
        admin.load_sale(SaleSettings(sku=sku, total=1_000_000, per_user_limit=1))
    slot = slot_of(engine.keys.partition(MOVING).tag)
    source = cluster.slot_owner(slot)
    target = next(node for node in cluster.masters if node is not source)

    calls = 0
    outcomes: Counter[str] = Counter()
    acknowledged: list[Reservation] = []
    reads = Counter[str]()
    stop = asyncio.Event()

    async def shopper(n: int) -> None:
        nonlocal calls
        i = 0
        while not stop.is_set():
            sku = hot if i % 4 else other
            user = f"s{n}-{i}"
            i += 1
            calls += 1
            try:
                # Half the calls carry an idempotency key: its record is one more key in the moving slot.
                key = user if i % 2 else None
                acknowledged.append(await engine.reserve(sku, user, idempotency_key=key))
                outcomes["ok"] += 1
            except Exception as error:  # counted and failed on below
                outcomes[f"{type(error).__name__}: {str(error)[:80]}"] += 1

    async def reader() -> None:
        while not stop.is_set():
            try:
                await engine.get_sale(hot)
                reads["ok"] += 1
            except Exception as error:
                reads[type(error).__name__] += 1
            await asyncio.sleep(0.002)

    sync_outcomes: Counter[str] = Counter()

    def sync_shopper() -> None:
        i = 0
        while not stop.is_set():
            try:
                admin.reserve(hot, f"sync-{i}")
                sync_outcomes["ok"] += 1
            except Exception as error:
                sync_outcomes[type(error).__name__] += 1
            i += 1

    steps: list[str] = []
    tasks = [asyncio.ensure_future(shopper(n)) for n in range(50)] + [asyncio.ensure_future(reader())]
    sync_thread = threading.Thread(target=sync_shopper)
    sync_thread.start()
    await asyncio.sleep(0.5)  # load before the move
    migration = asyncio.get_running_loop().run_in_executor(
        None, _migrate_slot, cluster, slot, source, target, steps
    )
    await migration
    await asyncio.sleep(0.5)  # and after it
    stop.set()
    await asyncio.gather(*tasks)
    sync_thread.join()
    assert engine._router is not None
    refreshes, met = engine._router.refreshes, engine._router.redirections
    await engine.close()

    assert steps[0] == "migrating", steps
    assert steps[-1] == "done", steps
    assert cluster.slot_owner(slot) is target
    # Every call answered, and answered with a reservation: the clients waited out ASK and TRYAGAIN.
    assert outcomes == {"ok": calls}, outcomes
    assert reads.keys() == {"ok"}, reads
    assert sync_outcomes.keys() == {"ok"}, sync_outcomes
    assert refreshes >= 2, "the async client never re-read the slot map after the move"
    # ASK (a key already moved) and MOVED (after the move) always; TRYAGAIN (a script whose keys are split
    # between the nodes mid-move) only when a call lands in that instant, which a loaded machine may miss.
    assert {"ASK", "MOVED"} <= met.keys(), f"the load never met the migration: {met}"
    # Nothing acknowledged is lost, nothing ran twice.
    for reservation in acknowledged:
        assert admin.get_reservation(reservation.id).user == reservation.user
    reserved = Counter(e.user for e in all_events(admin) if e.type == "reserved")
    assert all(n == 1 for n in reserved.values()), [u for u, n in reserved.items() if n > 1]
    assert sum(reserved.values()) == len(acknowledged) + sync_outcomes["ok"]
    assert admin.get_sale(hot).reserved + admin.get_sale(other).reserved == sum(reserved.values())
    check_invariants(admin)
    # The moved partition's keys are all on the new owner now, with their data.
    on_target = target.client()
    try:
        assert on_target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
    finally:
        on_target.close()
    print(f"{calls} async reserves, {sync_outcomes['ok']} sync, {reads['ok']} reads; {steps[1]}; {met}")
    admin.close()


def test_the_slot_of_a_moved_partition_is_found_again_by_a_client_that_knew_the_old_map(
    own_cluster: RedisCluster,
) -> None:
    """A sync client whose map predates a move gets MOVED once, then goes straight to the new owner."""
    cluster = own_cluster
    admin = Engine.from_url(cluster.url, EngineConfig(), cluster=True, max_connections=4)
    admin.load_scripts()
    sku = sku_in_partition(MOVING + 2, stem="LATE")
    admin.load_sale(SaleSettings(sku=sku, total=10))
    slot = slot_of(admin.keys.partition(MOVING + 2).tag)
    source = cluster.slot_owner(slot)
    target = next(node for node in cluster.masters if node is not source)
    _migrate_slot(cluster, slot, source, target, [])
    assert admin.reserve(sku, "late").sku == sku  # through the MOVED the old owner answered
    assert isinstance(admin.redis, redis.RedisCluster)
    assert admin.redis.get_node_from_key(admin.keys.partition(MOVING + 2).tag).port == target.port
    admin.close()


def test_a_script_whose_keys_are_split_by_a_migration_is_held_before_it_writes_anything(
    own_cluster: RedisCluster,
) -> None:
    """A slot marked MIGRATING (and IMPORTING on its new owner), none of its keys moved yet: a key the
    partition does not have yet counts as moved. Redis runs a script on the old owner only when every key in
    its KEYS is there, so a script that touched a key it did not declare (a confirm's ended record, a keyed
    reserve's idempotency answers) would stop half-way with "non local key", its first writes kept. Each
    script names such keys first (NEEDS_KEYS), so Redis answers ASK, then TRYAGAIN on the new owner, before
    the script runs: nothing written, and the call succeeds once the slot is stable again."""
    cluster = own_cluster
    partition = MOVING + 3
    engine = Engine.from_url(cluster.url, EngineConfig(), cluster=True, max_connections=4, pool_timeout=0.3)
    engine.load_scripts()
    sku = sku_in_partition(partition, stem="SPLIT")
    engine.load_sale(SaleSettings(sku=sku, total=10))
    paying = engine.reserve(sku, "ann")
    order = engine.begin_checkout(paying.id, "ann", "card")
    held = engine.reserve(sku, "ben")
    slot = slot_of(engine.keys.partition(partition).tag)
    source = cluster.slot_owner(slot)
    target = next(node for node in cluster.masters if node is not source)
    src, dst = source.client(decode_responses=True), target.client(decode_responses=True)
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
        before = {key: src.dump(key) for key in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)}
        for name, call in {
            "confirm": lambda: engine.confirm(order.id, "ann", "tx"),
            "release": lambda: engine.release(held.id, "ben"),
            "reserve with a key": lambda: engine.reserve(sku, "cid", idempotency_key="k"),
            "begin_checkout with a key": lambda: engine.begin_checkout(
                held.id, "ben", "c", idempotency_key="k"
            ),
        }.items():
            # TRYAGAIN, or redis-py's "TTL exhausted." after ASK -> TRYAGAIN -> ASK ...: both say nothing ran.
            with pytest.raises((redis.exceptions.TryAgainError, redis.exceptions.ClusterError)):
                call()
            after = {
                key: src.dump(key) for key in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            }
            assert after == before, f"{name} wrote part of its change"
    finally:
        for client in (src, dst):
            client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            client.close()
    assert engine.confirm(order.id, "ann", "tx").status == "CONFIRMED"
    assert engine.release(held.id, "ben").status == "CANCELLED"
    assert engine.reserve(sku, "cid", idempotency_key="k").user == "cid"
    check_invariants(engine, [partition])
    engine.close()
