"""Issue 11: one hot SKU split into B stock buckets on a Redis Cluster: ``flashsale bench hot-sku-buckets``.

On a launcher-started cluster of ``--redis-cluster N`` masters (default 3; or the cluster ``--redis-url``
names a node of), for each B of ``--buckets`` (default 1, 2, 4, 8) two fresh SKUs of ``--units`` units
are loaded split into B buckets (``engine.load_sale(..., buckets=B)``, engine/buckets.py) and bought by
many shoppers: ``--client-processes`` processes of ``--clients`` asyncio clients each, every attempt a
distinct user, through ``AsyncEngine.reserve``. Three phases, each timed and costed on its own:

1. **the race**: ``--attempts`` attempts (default 3 x units) on the first SKU, until it sells out, then
   its tail of refusals. Attempts/s over the whole race; successful reserves/s = units / the time to the
   last success.
2. **sold out**: ``units`` more attempts on that sold-out SKU: what a refusal costs with B buckets.
3. **every one can buy**: as many attempts as units on the second SKU, so that units run short in some
   buckets while others still have some: the transfers at work, and any refusal leaves a unit unsold.

For each: client CPU µs per attempt (all client processes), Redis CPU µs per attempt on each master and
in total (INFO cpu), and script calls per attempt (INFO commandstats, EVALSHA) on each master; transfers
between buckets from the buckets' streams (``transferred_in`` events). The checks: exactly ``units``
successes in the race, none in the sold-out phase (and no transfer), every refusal OUT_OF_STOCK;
``get_sale`` sums to available 0, reserved == units, moving 0 (the second SKU: reserved == its
successes); in each bucket total + moved == available + reserved + sold, none negative; the buckets'
streams replay to the summed counters and every transfer withdrawn was deposited.

The Bs are measured side by side, round after round (``--quick``: one round), the order rotated each
round; the headline ratios are the medians over rounds of rate(B) / rate(B=1) of the same round.

Placement: bucket b lives in partition (partition_of(sku) + b) % partitions, and which master serves a
partition depends on its hash tag's slot, so the SKU's name decides how B buckets spread over the masters
(two neighbouring partitions may share one). Each run's SKU is named so that its buckets spread as evenly
as the cluster allows (the first start partition with the fewest buckets on the busiest master), the
same placement in every round; the report says how a SKU named at random would spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import queue
import random
import statistics
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

import redis
from flashsale.bench.load import drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_cpu_seconds
from flashsale.bench.stats import Latencies, us_per_call
from flashsale.engine import AsyncEngine, Engine, SaleSettings
from flashsale.engine.events import Event, EventType, replay
from flashsale.engine.keys import partition_of
from redis.crc import key_slot

from flashsale.launcher import RedisCluster

DEFAULT_BUCKETS = (1, 2, 4, 8)
# Long enough that no hold lapses during a run (reserve would end a lapsed hold itself).
HOLD_MS = 600_000
# How long the main process waits for the client processes at a barrier or for their results.
WAIT_S = 300.0


@dataclass
class Settings:
    sizes: list[int]
    buckets: list[int]
    units: int
    attempts: int
    sold_out_attempts: int
    rounds: int
    processes: int
    clients_per_process: int
    max_seconds: float
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        sizes = sorted(set(options.redis_cluster)) or [3]
        buckets = sorted(set(options.buckets)) or list(DEFAULT_BUCKETS)
        units = options.units or (1000 if options.quick else 5000)
        attempts = options.attempts or 3 * units
        clients = options.clients or (500 if options.quick else 1000)
        rounds = 1 if options.quick else 3
        seconds = max(60.0, attempts / 2000)
        return cls(
            sizes, buckets, units, attempts, units, rounds, options.client_processes, clients, seconds,
            options.loop,
        )  # fmt: skip


# -- the cluster: which master serves each partition, where a SKU's buckets go ------------------------------
@dataclass(frozen=True)
class Topology:
    masters: list[str]  # URLs, in slot order (the launcher's master i serves slot range i)
    partition_master: list[int]  # partition -> index into masters

    @classmethod
    def read(cls, url: str, engine: Engine) -> Topology:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            rows: list[Any] = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            ranges = sorted(rows, key=lambda r: int(r[0]))
        finally:
            client.close()
        masters: list[str] = []
        owners: list[tuple[int, int, int]] = []  # (first slot, last slot, master index)
        for first, last, primary, *_replicas in ranges:
            address = f"redis://{primary[0]}:{primary[1]}/0"
            if address not in masters:
                masters.append(address)
            owners.append((int(first), int(last), masters.index(address)))
        slots = [key_slot(p.tag.encode()) for p in engine.keys.all()]
        return cls(masters, [next(m for a, b, m in owners if a <= s <= b) for s in slots])

    @property
    def partitions(self) -> int:
        return len(self.partition_master)

    def per_master(self, start: int, buckets: int) -> list[int]:
        """How many of the SKU's buckets each master serves when bucket 0 is in partition ``start``."""
        counts = [0] * len(self.masters)
        for b in range(buckets):
            counts[self.partition_master[(start + b) % self.partitions]] += 1
        return counts

    def best_start(self, buckets: int) -> int:
        """The first start partition with the fewest buckets on the busiest master (then the most masters)."""
        return min(
            range(self.partitions),
            key=lambda p: (max(self.per_master(p, buckets)), -sum(map(bool, self.per_master(p, buckets))), p),
        )

    def crowded_starts(self, buckets: int) -> int:
        """Of all start partitions (a SKU named at random), how many put the buckets on fewer masters than
        the best placement does."""
        best = sum(map(bool, self.per_master(self.best_start(buckets), buckets)))
        return sum(1 for p in range(self.partitions) if sum(map(bool, self.per_master(p, buckets))) < best)


def sku_in(partition: int, stem: str, partitions: int) -> str:
    """A SKU name whose partition (its bucket 0) is ``partition``."""
    for n in itertools.count():
        sku = f"{stem}-{n}"
        if partition_of(sku, partitions) == partition:
            return sku
    raise AssertionError("unreachable")


# -- client processes: up for the whole cluster, one task per phase ----------------------------------------
def _client_process(
    index: int,
    url: str,
    loop: str,
    clients: int,
    partitions: int,
    tasks: Any,
    results: Any,
    ready: Barrier,
    go: Barrier,
) -> None:
    """One client process: its own AsyncEngine on the cluster; for each task (a phase), a warm-up, the
    two barriers (the main process reads the masters' counters between them), then the attempts."""

    async def main() -> None:
        engine = AsyncEngine.from_url(url, cluster=True, max_connections=64)
        await engine.load_scripts()
        # No-op keys on every partition: each master's connections are open before the clock starts.
        warm = [sku_in(p, f"warm-{index}", partitions) for p in range(partitions)]
        try:
            while True:
                task = await asyncio.to_thread(tasks.get)
                if task is None:
                    return
                try:
                    results.put(await _phase_attempts(engine, task, warm, clients, ready, go))
                except BaseException as error:
                    ready.abort()
                    go.abort()
                    results.put({"error": f"client process {index}: {error!r}"})
                    raise
        finally:
            await engine.close()

    run(main(), loop)


async def _phase_attempts(
    engine: AsyncEngine, task: dict[str, Any], warm: list[str], clients: int, ready: Barrier, go: Barrier
) -> dict[str, Any]:
    sku, prefix = task["sku"], task["prefix"]
    # Distinct users with ids in no particular order (a login service's, in arrival order): crc32 of
    # sequential ids ("u1", "u2", ...) cycles through the home buckets exactly, which no real crowd does.
    rng = random.Random(prefix)
    users = [f"{prefix}{i}-{rng.getrandbits(32):08x}" for i in range(task["count"])]
    await engine.buckets_of(sku)  # learnt once per SKU, as an API process learns it
    await drive(clients, 2 * clients, lambda i: engine.noop(warm[i % len(warm)]), max_seconds=10)
    await asyncio.to_thread(ready.wait, WAIT_S)
    await asyncio.to_thread(go.wait, WAIT_S)
    last_ok = 0.0

    async def attempt(i: int) -> None:
        nonlocal last_ok
        await engine.reserve(sku, users[i])
        last_ok = time.monotonic()

    started = time.monotonic()
    result = await drive(clients, task["count"], attempt, max_seconds=task["max_seconds"])
    return {
        "attempts": result.attempts,
        "started": started,
        "ended": started + result.seconds,
        "last_ok": last_ok,
        "client_cpu_s": result.client_cpu_s,
        "outcomes": dict(result.outcomes),
        "samples_ns": result.latencies.samples_ns.tobytes(),
    }


@dataclass
class Clients:
    """The client processes of one cluster, and how the main process hands them a phase."""

    processes: list[Any]
    tasks: list[Any]
    results: Any
    ready: Barrier
    go: Barrier

    @classmethod
    def start(cls, url: str, s: Settings, partitions: int) -> Clients:
        context = multiprocessing.get_context("spawn")
        tasks = [context.Queue() for _ in range(s.processes)]
        results = context.Queue()
        ready, go = context.Barrier(s.processes + 1), context.Barrier(s.processes + 1)
        processes = [
            context.Process(
                target=_client_process,
                args=(i, url, s.loop, s.clients_per_process, partitions, tasks[i], results, ready, go),
                daemon=True,
            )
            for i in range(s.processes)
        ]
        for process in processes:
            process.start()
        return cls(processes, tasks, results, ready, go)

    def stop(self) -> None:
        for tasks in self.tasks:
            tasks.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():  # only our own children, by handle
                process.terminate()
                process.join()

    def phase(
        self, masters: list[str], sku: str, tag: str, attempts: int, max_seconds: float
    ) -> dict[str, Any]:
        """``attempts`` attempts on ``sku`` shared by the client processes, started together; with what
        they cost each master (CPU seconds, EVALSHA calls) between the barriers."""
        share, extra = divmod(attempts, len(self.tasks))
        for p, tasks in enumerate(self.tasks):
            count = share + (1 if p < extra else 0)
            tasks.put({"sku": sku, "prefix": f"{tag}-p{p}-", "count": count, "max_seconds": max_seconds})
        try:
            self.ready.wait(WAIT_S)
            before = [_node_counters(url) for url in masters]
            self.go.wait(WAIT_S)
        except threading.BrokenBarrierError:  # a client process failed: say why, if it could tell
            raise RuntimeError(f"a client process failed: {self._errors() or 'no word from it'}") from None
        parts = [self.results.get(timeout=WAIT_S) for _ in self.tasks]
        after = [_node_counters(url) for url in masters]
        errors = [p["error"] for p in parts if "error" in p]
        if errors:
            raise RuntimeError("; ".join(errors))
        return _phase_figures(parts, before, after)

    def _errors(self) -> str:
        errors = []
        with contextlib.suppress(queue.Empty):
            while True:
                errors.append(str(self.results.get(timeout=5).get("error", "")))
        return "; ".join(e for e in errors if e)


def _node_counters(url: str) -> tuple[float, int]:
    """A master's CPU seconds so far and its EVALSHA calls so far."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()
    return redis_cpu_seconds(url), calls


def _phase_figures(
    parts: list[dict[str, Any]], before: list[tuple[float, int]], after: list[tuple[float, int]]
) -> dict[str, Any]:
    latencies = Latencies()
    outcomes: Counter[str] = Counter()
    for part in parts:
        latencies.samples_ns.extend(array("q", part["samples_ns"]))
        outcomes.update(part["outcomes"])
    attempts = sum(p["attempts"] for p in parts)
    started = min(p["started"] for p in parts)
    seconds = max(p["ended"] for p in parts) - started
    last_ok = max(p["last_ok"] for p in parts)
    cpu = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    calls = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    client_cpu = sum(p["client_cpu_s"] for p in parts)
    successes = outcomes.get("ok", 0)
    sellout = last_ok - started if successes else 0.0
    return {
        "attempts": attempts,
        "successes": successes,
        "outcomes": dict(outcomes),
        "seconds": round(seconds, 3),
        "attempts_per_s": round(attempts / seconds, 1) if seconds else 0.0,
        "sellout_s": round(sellout, 3),
        "reserves_per_s": round(successes / sellout, 1) if sellout else 0.0,
        "successes_per_s": round(successes / seconds, 1) if seconds else 0.0,
        "client_cpu_s": round(client_cpu, 3),
        "client_us_per_attempt": round(us_per_call(client_cpu, attempts), 2),
        "redis_cpu_s_per_master": [round(c, 3) for c in cpu],
        "redis_us_per_attempt_per_master": [round(us_per_call(c, attempts), 2) for c in cpu],
        "redis_us_per_attempt": round(us_per_call(sum(cpu), attempts), 2),
        "redis_core_share_per_master": [round(c / seconds, 3) if seconds else 0.0 for c in cpu],
        "script_calls_per_master": calls,
        "script_calls_per_attempt": round(sum(calls) / attempts, 3) if attempts else 0.0,
        "latency": latencies.summary(),
    }


# -- one run: load, race, sold out, checks ------------------------------------------------------------------
def _stream_marks(engine: Engine, partitions: list[int]) -> dict[int, str]:
    """The last entry id of each partition's stream ("-" when empty)."""
    marks = {}
    for p in partitions:
        last = engine.redis.xrevrange(engine.keys.partition(p).events(), count=1)
        marks[p] = str(last[0][0]) if last else "-"
    return marks


def _events_after(engine: Engine, sku: str, marks: dict[int, str]) -> Iterator[Event]:
    for p, after in marks.items():
        while True:
            page = engine.read_events(p, after=after, count=10_000)
            if not page:
                break
            yield from (e for e in page if e.sku == sku)
            after = page[-1].stream_id


def _stream_id(value: str) -> tuple[int, int]:
    if value == "-":
        return (-1, -1)
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)


def _between(events: list[Event], low: dict[int, str], high: dict[int, str] | None) -> list[Event]:
    """The events after the marks ``low`` and up to the marks ``high`` (None: to the end)."""
    return [
        e
        for e in events
        if _stream_id(e.stream_id) > _stream_id(low[e.partition])
        and (high is None or _stream_id(e.stream_id) <= _stream_id(high[e.partition]))
    ]


def _transfers(events: list[Event], kind: EventType = EventType.TRANSFERRED_IN) -> tuple[int, int]:
    """How many transfers of this kind the events hold, and the units they moved."""
    moved = [e.quantity or 0 for e in events if e.type == kind]
    return len(moved), sum(moved)


def _bucket_rows(engine: Engine, sku: str, buckets: int) -> list[dict[str, int]]:
    """Each bucket's own counters straight from its hash (``moved`` included, which Sale leaves out)."""
    fields = ("total", "moved", "available", "reserved", "sold")
    rows = []
    for b in range(buckets):
        values = engine.redis.hmget(engine.keys.for_bucket(sku, b).sku(sku), fields)
        rows.append({"bucket": b, **{f: int(v or 0) for f, v in zip(fields, values, strict=True)}})
    return rows


COUNTERS = ("total", "available", "reserved", "sold", "moving")


@dataclass
class SkuState:
    """A SKU after its phases: get_sale's sums, each bucket's hash, and its events since before it was
    loaded (from every bucket's partition)."""

    counters: dict[str, int]
    buckets: int
    rows: list[dict[str, int]]
    events: list[Event]

    @classmethod
    def read(cls, engine: Engine, sku: str, buckets: int, marks: dict[int, str]) -> SkuState:
        sale = engine.get_sale(sku)
        counters = {k: int(getattr(sale, k)) for k in COUNTERS}
        events = list(_events_after(engine, sku, marks))
        return cls(counters, sale.buckets, _bucket_rows(engine, sku, buckets), events)

    def buckets_add_up(self) -> bool:
        return all(
            r["total"] + r["moved"] == r["available"] + r["reserved"] + r["sold"]
            and min(r["available"], r["reserved"], r["sold"]) >= 0
            for r in self.rows
        )

    def replayed(self, sku: str) -> dict[str, int] | None:
        totals = replay(self.events).get(sku)
        return {k: int(getattr(totals, k)) for k in COUNTERS} if totals is not None else None

    def bucket_summary(self) -> list[tuple[int, int, int]]:
        return [(r["available"], r["reserved"], r["moved"]) for r in self.rows]


def _check_sku(report: Report, label: str, sku: str, state: SkuState, expected: dict[str, int]) -> None:
    report.check(
        f"{label}: get_sale {', '.join(f'{k} {v:,}' for k, v in expected.items())}; each bucket adds up",
        state.counters == expected and state.buckets_add_up(),
        f"{state.counters}; buckets (available, reserved, moved) {state.bucket_summary()}",
    )
    replayed = state.replayed(sku)
    outs, ins = _transfers(state.events, EventType.TRANSFERRED_OUT), _transfers(state.events)
    report.check(
        f"{label}: the buckets' streams replay to the counters; every transfer withdrawn was deposited",
        replayed == state.counters and outs == ins,
        f"replayed {replayed}; out {outs}, in {ins} (transfers, units)",
    )


def _one_run(
    engine: Engine,
    clients: Clients,
    top: Topology,
    s: Settings,
    buckets: int,
    round_: int,
    position: int,
    run_id: str,
    report: Report,
) -> dict[str, Any]:
    start = top.best_start(buckets)
    stem = f"hsb-{run_id}-b{buckets}-r{round_}"
    hot, enough = sku_in(start, f"{stem}-race", top.partitions), sku_in(start, f"{stem}-all", top.partitions)
    partitions = sorted({engine.keys.for_bucket(hot, b).index for b in range(buckets)})
    marks = _stream_marks(engine, partitions)
    for sku in (hot, enough):
        engine.load_sale(
            SaleSettings(
                sku=sku, name="Hot SKU", total=s.units, per_user_limit=1, reservation_ttl_ms=HOLD_MS
            ),
            buckets=buckets,
        )
    loaded = _stream_marks(engine, partitions)
    race = clients.phase(top.masters, hot, f"{hot}-race", s.attempts, s.max_seconds)
    raced = _stream_marks(engine, partitions)
    sold_out = clients.phase(top.masters, hot, f"{hot}-soldout", s.sold_out_attempts, s.max_seconds)
    every_one = clients.phase(top.masters, enough, f"{enough}-all", s.units, s.max_seconds)
    hot_state = SkuState.read(engine, hot, buckets, marks)
    all_state = SkuState.read(engine, enough, buckets, marks)

    label = f"{len(top.masters)} masters, B={buckets}, round {round_ + 1}"
    refusals = Counter({k: v for k, v in race["outcomes"].items() if k != "ok"})
    refusals.update({k: v for k, v in sold_out["outcomes"].items() if k != "ok"})
    refusals.update({k: v for k, v in every_one["outcomes"].items() if k != "ok"})
    tail_transfers = _transfers(_between(hot_state.events, raced, None), EventType.TRANSFERRED_OUT)[0]
    report.check(
        f"{label}: race: exactly {s.units:,} successes; sold out: none, no transfer; every refusal "
        "OUT_OF_STOCK",
        race["successes"] == s.units
        and sold_out["successes"] == 0
        and tail_transfers == 0
        and set(refusals) <= {"OUT_OF_STOCK"}
        and (race["attempts"], sold_out["attempts"], every_one["attempts"])
        == (s.attempts, s.sold_out_attempts, s.units),
        f"race {race['outcomes']} in {race['attempts']:,} attempts; sold out {sold_out['outcomes']}, "
        f"{tail_transfers} transfers; every one can buy {every_one['outcomes']}",
    )
    _check_sku(
        report,
        f"{label}, race SKU",
        hot,
        hot_state,
        {"total": s.units, "available": 0, "reserved": s.units, "sold": 0, "moving": 0},
    )
    bought = every_one["successes"]
    _check_sku(
        report,
        f"{label}, every-one-can-buy SKU",
        enough,
        all_state,
        {"total": s.units, "available": s.units - bought, "reserved": bought, "sold": 0, "moving": 0},
    )
    race_transfers, race_units = _transfers(_between(hot_state.events, loaded, raced))
    all_transfers, all_units = _transfers(_between(all_state.events, loaded, None))
    return {
        "masters": len(top.masters),
        "buckets": buckets,
        "round": round_ + 1,
        "position": position,
        "skus": {"race": hot, "every_one": enough},
        "start_partition": start,
        "bucket_partitions": partitions,
        "buckets_per_master": top.per_master(start, buckets),
        "load_transfers": _transfers(_between(hot_state.events, marks, loaded))[0],
        "race": {**race, "transfers": race_transfers, "units_moved": race_units},
        "sold_out": {**sold_out, "transfers": tail_transfers},
        "every_one": {**every_one, "transfers": all_transfers, "units_moved": all_units},
        "counters": {"race": hot_state.counters, "every_one": all_state.counters},
        "bucket_counters": {"race": hot_state.rows, "every_one": all_state.rows},
    }


# -- the scenario -------------------------------------------------------------------------------------------
def _on_cluster(
    url: str, s: Settings, run_id: str, report: Report
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Every round on one cluster: its runs, and how B buckets can spread over its masters."""
    engine = Engine.from_url(url, cluster=True)
    engine.load_scripts()
    top = Topology.read(url, engine)
    placement = {
        len(top.masters): {
            "partition_master": top.partition_master,
            "best": {b: top.per_master(top.best_start(b), b) for b in s.buckets},
            "crowded_starts": {b: top.crowded_starts(b) for b in s.buckets},
        }
    }
    report.servers[f"redis cluster of {len(top.masters)} masters"] = f"(redis {_version(url)})"
    clients = Clients.start(url, s, top.partitions)
    runs = []
    try:
        for r in range(s.rounds):
            order = s.buckets[r % len(s.buckets) :] + s.buckets[: r % len(s.buckets)]
            for position, buckets in enumerate(order):
                print(f"{len(top.masters)} masters, round {r + 1}, B={buckets}", flush=True)
                runs.append(_one_run(engine, clients, top, s, buckets, r, position, run_id, report))
    finally:
        clients.stop()
        engine.close()
    return runs, placement


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("hot-sku-buckets", asdict(s))
    runs: list[dict[str, Any]] = []
    topologies: dict[int, dict[str, Any]] = {}
    urls = [options.redis_url] if options.redis_url else []
    for size in [] if options.redis_url else s.sizes:
        with RedisCluster(size) as cluster:
            more, placement = _on_cluster(cluster.url, s, options.run_id, report)
        runs += more
        topologies.update(placement)
    for url in urls:  # a cluster given by --redis-url (one of its nodes)
        more, placement = _on_cluster(url, s, options.run_id, report)
        runs += more
        topologies.update(placement)
    report.figures = {"runs": runs, "placement": topologies}
    _summarise(report, s, runs, topologies)
    return report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _pick(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        value = value[key]
    return value


def _med(runs: list[dict[str, Any]], *path: str) -> float:
    """The median over rounds of one figure (``path`` into each run's dict)."""
    return _median([float(_pick(r, path)) for r in runs])


def _med_each(runs: list[dict[str, Any]], *path: str) -> list[float]:
    """The median over rounds of each element of a per-master list."""
    lists = [_pick(r, path) for r in runs]
    return [_median([float(x[i]) for x in lists]) for i in range(len(lists[0]))] if lists else []


def _per_master(values: list[float], digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def _ratio(value: float, base: float) -> float | str:
    return round(value / base, 2) if base else ""


def _summarise(
    report: Report, s: Settings, runs: list[dict[str, Any]], topologies: dict[int, dict[str, Any]]
) -> None:
    for masters in sorted({r["masters"] for r in runs}):
        mine = [r for r in runs if r["masters"] == masters]
        _cluster_tables(report, s, masters, {b: [r for r in mine if r["buckets"] == b] for b in s.buckets})
        _cluster_ratios(report, s, masters, mine)
        _cluster_notes(report, masters, mine)
        placement = topologies.get(masters)
        if placement and masters > 1:
            crowded = ", ".join(
                f"B={b}: {placement['crowded_starts'][b]} of {len(placement['partition_master'])}"
                for b in s.buckets
                if b > 1
            )
            report.notes.append(
                f"Placement on {masters} masters (partition → master {placement['partition_master']}): each "
                "run's SKU is named so that its buckets spread as evenly as the cluster allows (the 'buckets "
                "per master' column). The engine itself puts bucket b in partition partition_of(sku) + b, "
                "and neighbouring partitions often share a master: a SKU named at random lands its buckets "
                f"on fewer masters than that for this many of the start partitions: {crowded}."
            )
    cores = os.cpu_count() or 1
    biggest = max((r["masters"] for r in runs), default=1)
    if cores < biggest + s.processes:
        report.notes.append(
            f"Measured on a {cores}-core machine: the {s.processes} client process(es) and the {biggest} "
            f"masters share the cores, so these are the {cores}-core figures: more buckets cannot add "
            "throughput here, and the rates follow the client's CPU per attempt (client µs column). What "
            "carries to a machine with a core per master and enough client cores is the cost per attempt "
            "on each master: the 'Redis-bound ceiling' column is 1e6 / the busiest master's Redis µs per "
            "attempt, the rate at which that master would fill one core."
        )
    report.notes.append(
        "The race: reserves/s = units / the time from its start to its last success (a short window); "
        "attempts/s counts every answered call (its successes and its tail of refusals). Sold out: the same "
        "SKU once every unit is held, each attempt refused. Every one can buy: a second SKU of the same "
        "units and buckets, as many attempts as units, so each refusal there leaves a unit unsold. Script "
        "calls are EVALSHA calls (INFO commandstats on the masters; the engine's plain reads are not "
        "counted); transfers are transferred_in events on the buckets' streams, not counting the B - 1 "
        "of load_sale's even split. Users are distinct and their ids random: with sequential ids (u1, u2, "
        "...) crc32 % B deals them to the home buckets in exact rotation."
    )


def _cluster_notes(report: Report, masters: int, runs: list[dict[str, Any]]) -> None:
    """What the runs show about transfers: none in the races, refusals with units left."""
    bucketed = [r for r in runs if r["buckets"] > 1]
    if bucketed and all(r["race"]["transfers"] == 0 for r in bucketed):
        report.notes.append(
            f"{masters} masters: no race made a transfer. With more shoppers than units, each bucket is "
            "emptied by its own home users (crc32 spreads them evenly); a shopper refused at home then reads "
            "every other bucket, finds none with a unit and is refused: B script calls (the sold-out table)."
        )
    for b in sorted({r["buckets"] for r in bucketed}):
        mine = [r for r in bucketed if r["buckets"] == b]
        refused = sum(r["every_one"]["attempts"] - r["every_one"]["successes"] for r in mine)
        if not refused:
            continue
        left = [
            f"{row['available']} in bucket {row['bucket']}"
            for r in mine
            for row in r["bucket_counters"]["every_one"]
            if row["available"]
        ]
        transfers = sum(r["every_one"]["transfers"] for r in mine)
        moved = sum(r["every_one"]["units_moved"] for r in mine)
        report.notes.append(
            f"{masters} masters, B={b}, every one can buy: {refused} shopper(s) over {len(mine)} round(s) "
            f"refused OUT_OF_STOCK while units were left (left at the end: {', '.join(left)}); {transfers} "
            f"transfers moved {moved} units. By engine/buckets.py's rule a shopper is refused when a round's "
            "read finds no bucket with a unit and none moving between two, or after its rounds "
            "(engine.buckets.TRANSFER_ROUNDS); units can end where no shopper is left to ask for them."
        )


def _ceiling(per_master_us: list[float]) -> int:
    """The rate at which the busiest master fills one core (0 when nothing was measured)."""
    busiest = max(per_master_us, default=0.0)
    return round(1e6 / busiest) if busiest else 0


def _cost_cells(runs: list[dict[str, Any]], phase: str) -> list[Any]:
    """Client µs, Redis µs (all masters, per master), the Redis-bound ceiling, script calls (all, per
    master) per attempt of a phase, and its p99: medians over rounds."""
    per_master_us = _med_each(runs, phase, "redis_us_per_attempt_per_master")
    attempts = _med(runs, phase, "attempts")
    calls = [c / attempts for c in _med_each(runs, phase, "script_calls_per_master")] if attempts else []
    return [
        round(_med(runs, phase, "client_us_per_attempt"), 1),
        round(_med(runs, phase, "redis_us_per_attempt"), 1),
        _per_master(per_master_us),
        _ceiling(per_master_us),
        round(_med(runs, phase, "script_calls_per_attempt"), 2),
        _per_master(calls, 2),
        _med(runs, phase, "latency", "p99_ms"),
    ]


COST_COLUMNS = [
    "client µs/attempt",
    "redis µs/attempt (all masters)",
    "redis µs/attempt per master",
    "Redis-bound ceiling attempts/s",
    "script calls/attempt",
    "script calls/attempt per master",
    "p99 ms",
]


def _cluster_tables(report: Report, s: Settings, masters: int, by_b: dict[int, list[dict[str, Any]]]) -> None:
    race, sold_out, every_one = [], [], []
    for b, runs in by_b.items():
        race.append(
            [
                b,
                " / ".join(str(n) for n in runs[0]["buckets_per_master"]),
                round(_med(runs, "race", "attempts_per_s")),
                round(_med(runs, "race", "reserves_per_s")),
                _med(runs, "race", "sellout_s"),
                round(_med(runs, "race", "transfers")),
                _per_master([100 * x for x in _med_each(runs, "race", "redis_core_share_per_master")], 0),
                *_cost_cells(runs, "race"),
            ]
        )
        sold_out.append([b, round(_med(runs, "sold_out", "attempts_per_s")), *_cost_cells(runs, "sold_out")])
        every_one.append(
            [
                b,
                round(_med(runs, "every_one", "successes_per_s")),
                round(_med(runs, "every_one", "attempts") - _med(runs, "every_one", "successes")),
                round(_med(runs, "every_one", "transfers")),
                round(_med(runs, "every_one", "units_moved")),
                *_cost_cells(runs, "every_one"),
            ]
        )
    shoppers = (
        f"{s.processes} client process(es) × {s.clients_per_process:,} clients, each attempt a distinct "
        f"user; medians of {s.rounds} round(s)"
    )
    report.table(
        f"The race, {masters} masters: {s.units:,} units of one SKU in B buckets, {s.attempts:,} attempts "
        f"({shoppers})",
        [
            "B",
            "buckets per master",
            "attempts/s",
            "reserves/s",
            "sell-out s",
            "transfers",
            "redis CPU per master (% of a core)",
            *COST_COLUMNS,
        ],
        race,
    )
    report.table(
        f"Sold out, {masters} masters: {s.sold_out_attempts:,} more attempts on the race's SKU, every one "
        "refused",
        ["B", "refusals/s", *COST_COLUMNS],
        sold_out,
    )
    report.table(
        f"Every one can buy, {masters} masters: another SKU of {s.units:,} units in B buckets, {s.units:,} "
        f"attempts ({shoppers})",
        ["B", "reserves/s", "refused with units left", "transfers", "units moved", *COST_COLUMNS],
        every_one,
    )


# The rates compared with the smallest B's, run by run and as medians: (name, phase, figure).
RATES = (
    ("race attempts/s", "race", "attempts_per_s"),
    ("race reserves/s", "race", "reserves_per_s"),
    ("sold-out refusals/s", "sold_out", "attempts_per_s"),
    ("every-one-can-buy reserves/s", "every_one", "successes_per_s"),
)


def _cluster_ratios(report: Report, s: Settings, masters: int, runs: list[dict[str, Any]]) -> None:
    base_b = min(s.buckets)
    base = {r["round"]: r for r in runs if r["buckets"] == base_b}
    rows = []
    for r in sorted(runs, key=lambda r: (r["round"], r["position"])):
        ref = base.get(r["round"])
        rows.append(
            [
                r["round"],
                r["buckets"],
                *(round(r[phase][key]) for _, phase, key in RATES),
                *(_ratio(r[phase][key], ref[phase][key]) if ref else "" for _, phase, key in RATES),
                r["race"]["transfers"],
                r["every_one"]["transfers"],
                r["every_one"]["attempts"] - r["every_one"]["successes"],
            ]
        )
    report.table(
        f"Every run, {masters} masters, in the order measured (the order of B rotated each round)",
        [
            "round",
            "B",
            *(name for name, _, _ in RATES),
            *(f"{name.split(' ')[0]} {name.split(' ')[-1]} ÷ B={base_b}" for name, _, _ in RATES),
            "race transfers",
            "every-one transfers",
            "every-one refused",
        ],
        rows,
    )
    for b in s.buckets:
        if b == base_b:
            continue
        for name, phase, key in RATES:
            ratios = [
                r[phase][key] / base[r["round"]][phase][key]
                for r in runs
                if r["buckets"] == b and r["round"] in base and base[r["round"]][phase][key]
            ]
            report.ratio(
                f"{masters} masters: {name} at B={b} / B={base_b} (median of {len(ratios)} round(s))",
                _median(ratios),
                1.0,
            )


def _version(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()
