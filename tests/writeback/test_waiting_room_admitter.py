"""The waiting rooms' admitter in real worker processes: shoppers admitted at the configured rate, never
twice, nobody reserving without an admission; the admitting worker killed (-9) mid-sale loses no place and
the survivor carries on at the same rate; what was admitted reaches PostgreSQL and Kafka."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import redis
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.errors import NotAdmitted
from flashsale.engine.models import WaitingRoom
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, spawn_worker, wait_drained
from writeback_checks import all_events, read_topic

SKU, SHOPPERS, RATE = "ROOM-1", 1500, 60


def admissions(engine: Engine) -> list[tuple[int, list[str]]]:
    """Every admitter step's (time, shoppers), from the partition's stream."""
    events = engine.read_events(engine.keys.for_sku(SKU).index)
    return [(e.at, e.users or []) for e in events if e.type == "queue_admitted"]


def now_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def rate_between(steps: list[tuple[int, list[str]]], start: int, end: int) -> float:
    """Shoppers admitted per second by the steps in (start, end]."""
    admitted = sum(len(users) for at, users in steps if start < at <= end)
    return admitted * 1000 / (end - start)


def test_admission_at_the_rate_nobody_twice_and_a_killed_admitter_is_taken_over(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    now = now_ms(engine)
    engine.load_sale(SaleSettings(sku=SKU, total=100_000, per_user_limit=1, starts_at=now + 1500))
    engine.set_waiting_room(SKU, WaitingRoom(admit_per_s=RATE, admission_ttl_ms=600_000))
    shoppers = [f"s{i}" for i in range(SHOPPERS)]
    for user in shoppers:
        engine.join_queue(SKU, user)

    # Shoppers keep trying to reserve, admitted or not: only the admitted may succeed.
    stop, reserved, refused = threading.Event(), set(), [0]

    def keep_trying() -> None:
        rng = random.Random(3)
        while not stop.is_set():
            user = rng.choice(shoppers)
            try:
                engine.reserve(SKU, user)
                reserved.add(user)
            except NotAdmitted:
                refused[0] += 1
            except Exception:  # ALREADY_RESERVED for one who reserved before
                pass
            time.sleep(0.005)

    trying = threading.Thread(target=keep_trying, daemon=True)
    trying.start()
    options = {
        name: WorkerOptions(worker_id=name, lease_ms=1500, sweep=False, trim=False)
        for name in ("adm-a", "adm-b")
    }
    workers = {
        name: spawn_worker(settings, o, log_path=tmp_path / f"{name}.log") for name, o in options.items()
    }
    client = redis.Redis.from_url(str(settings.redis_url), decode_responses=True)
    lease = engine.keys.for_sku(SKU).admitter_lease(SKU)
    try:
        deadline = time.monotonic() + 30
        while not admissions(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(4)
        holder = client.get(lease)
        assert holder in workers
        killed_at = now_ms(engine)
        workers[holder].send_signal(signal.SIGKILL)
        workers[holder].wait()
        survivor = next(name for name in workers if name != holder)
        while client.get(lease) != survivor and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        time.sleep(4)
    finally:
        stop.set()
        trying.join()
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    steps = admissions(engine)
    first = steps[0][0]
    before = rate_between(steps, first, killed_at)
    takeover = min(at for at, _ in steps if at > killed_at)
    after = rate_between(steps, takeover, steps[-1][0])
    print(
        f"admitted/s before the kill {before:.1f}, after {after:.1f}; taken over in {takeover - killed_at} ms"
    )
    assert abs(before - RATE) <= 0.1 * RATE, before
    assert abs(after - RATE) <= 0.1 * RATE, after
    assert takeover - killed_at < 1500 + 1500  # the lease lapses, the survivor's next discovery takes it
    # Nobody admitted twice, no place lost: each shopper is in line or admitted, exactly once.
    admitted = [user for _, users in steps for user in users]
    assert len(admitted) == len(set(admitted))
    p = engine.keys.for_sku(SKU)
    waiting = set(client.zrange(p.queue(SKU), 0, -1))
    assert not waiting & set(admitted)
    assert waiting | set(admitted) == set(shoppers)
    # Nobody reserved without an admission; the others were refused.
    assert reserved
    assert reserved <= set(admitted)
    assert refused[0] > 0
    assert {e.user for e in all_events(engine) if e.type == "reserved"} == reserved

    # What was admitted reaches PostgreSQL (the count) and Kafka (who).
    drainer = spawn_worker(settings, WorkerOptions(worker_id="drain", admit=False, trim=False))
    try:
        assert wait_drained(settings, timeout_s=60)
    finally:
        drainer.terminate()
        drainer.wait(30)
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute(
            "SELECT is_on, admit_per_second, admitted FROM waiting_rooms WHERE sku_id = %s", (SKU,)
        )
        assert row.fetchone() == (True, RATE, len(admitted))
    messages = read_topic(str(settings.kafka_bootstrap), settings.topic_inventory)
    published = [u for m in messages if m.get("type") == "queue_admitted" for u in m["users"]]
    assert sorted(set(published)) == sorted(admitted)
