"""Redis memory: bytes per held reservation, with and without an idempotency key, and per stream event.

N held reservations are made through ``AsyncEngine.reserve`` (each a distinct user, one unit, a TTL long
enough that none lapses, SKUs of 1,000 units each so every one sells out), first without idempotency keys,
then on fresh SKUs with one key each (a UUID, as the API's ``Idempotency-Key`` header carries). Each
variant reads, before and after its holds:

- INFO memory ``used_memory``: the delta / N is the bytes per held reservation, everything included
  (keyspace entries, encodings, the allocator's rounding);
- ``MEMORY USAGE key SAMPLES 0`` (every element counted) of each key the holds write, by kind: the SKU
  hashes (a user's ``h:<user>`` count), the holds lists and sorted sets (the deadline indexes), the
  partitions' open hashes (the records),
  the partition streams (the events: delta / new entries = bytes per event) and the idempotency hashes;
  what INFO counts beyond those keys is "other".

No worker runs, so every hold's event is still in its stream: that is the cost of a hold "while unapplied";
once the worker has applied it and trimmed the stream, a hold costs about one event less.
Checks: every reserve succeeded; per SKU reserved == holds made, available 0, invariant 1; the holds
lists, open hashes and streams each grew by exactly N entries (the holds sorted sets by none: every hold
was made in deadline order) (the idempotency hashes by N fields
with keys, 0 without); the streams replay to the counters; repeating some idempotent calls returns the same
reservations and changes nothing.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from flashsale.bench.checks import invariant_1, replayed_counters, sku_counters
from flashsale.bench.load import async_engine, drive, run
from flashsale.bench.options import Options
from flashsale.bench.report import Report
from flashsale.bench.servers import redis_version, running
from flashsale.engine import AsyncEngine, SaleSettings

# Issue 14's targets, bytes.
TARGETS = {"per_hold": 400, "per_hold_with_key": 550, "per_event": 120}
KINDS = ("sku hashes", "holds lists", "holds zsets", "open hashes", "streams", "idempotency hashes")


@dataclass
class Settings:
    holds: int
    holds_per_sku: int
    clients: int
    repeats: int
    loop: str

    @classmethod
    def for_run(cls, options: Options) -> Settings:
        default = 10_000 if options.quick else 100_000
        return cls(options.holds or default, 1_000, 200, 100, options.loop)

    @property
    def skus(self) -> int:
        return math.ceil(self.holds / self.holds_per_sku)


def user_id(i: int) -> str:
    """A 12-character user id, as a token's ``sub`` might be."""
    return f"user-{i:07d}"


async def _keys(engine: AsyncEngine, client: aioredis.Redis, skus: list[str]) -> dict[str, list[str]]:
    """The keys a hold of these SKUs writes, by kind (the idempotency generations found by SCAN)."""
    partitions = {engine.keys.for_sku(sku) for sku in skus}
    idem = [
        key
        for p in sorted(partitions, key=lambda p: p.index)
        async for key in client.scan_iter(match=p.idempotency(0)[:-1] + "*", count=1000)
    ]
    return {
        "sku hashes": [engine.keys.for_sku(sku).sku(sku) for sku in skus],
        "holds lists": [engine.keys.for_sku(sku).due(sku) for sku in skus],
        "holds zsets": [engine.keys.for_sku(sku).holds(sku) for sku in skus],
        "open hashes": sorted(p.open_holds() for p in partitions),
        "streams": sorted(p.events() for p in partitions),
        "idempotency hashes": sorted(set(idem)),
    }


async def _snapshot(engine: AsyncEngine, client: aioredis.Redis, skus: list[str]) -> dict[str, Any]:
    """used_memory, each kind's MEMORY USAGE (every element sampled) and its entries."""
    keys = await _keys(engine, client, skus)
    pipe = client.pipeline(transaction=False)
    for kind in KINDS:
        for key in keys[kind]:
            pipe.memory_usage(key, samples=0)
    usage = iter(await pipe.execute())
    by_kind = {kind: sum(int(next(usage) or 0) for _ in keys[kind]) for kind in KINDS}
    pipe = client.pipeline(transaction=False)
    for key in keys["holds lists"]:
        pipe.llen(key)
    for key in keys["holds zsets"]:
        pipe.zcard(key)
    for key in keys["open hashes"] + keys["idempotency hashes"]:
        pipe.hlen(key)
    for key in keys["streams"]:
        pipe.xlen(key)
    counts = iter(await pipe.execute())
    entries = {
        kind: sum(int(next(counts)) for _ in keys[kind])
        for kind in ("holds lists", "holds zsets", "open hashes", "idempotency hashes", "streams")
    }
    info = await client.info("memory")
    return {
        "used_memory": int(info["used_memory"]),
        "bytes": by_kind,
        "entries": entries,
        "keys": {kind: len(keys[kind]) for kind in KINDS},
    }


async def _variant(
    engine: AsyncEngine,
    client: aioredis.Redis,
    url: str,
    s: Settings,
    tag: str,
    with_key: bool,
    report: Report,
    label: str,
) -> dict[str, Any]:
    """One variant: N holds over fresh SKUs, with or without idempotency keys; its figures and checks."""
    name = "with idempotency key" if with_key else "without idempotency key"
    skus = [f"mem-{tag}-{'k' if with_key else 'n'}{k:03d}" for k in range(s.skus)]
    units = [min(s.holds_per_sku, s.holds - k * s.holds_per_sku) for k in range(s.skus)]
    await asyncio.gather(
        *(
            engine.load_sale(SaleSettings(sku=sku, total=n, reservation_ttl_ms=24 * 3_600_000))
            for sku, n in zip(skus, units, strict=True)
        )
    )
    keys = [str(uuid.uuid4()) for _ in range(s.holds)] if with_key else None
    offset = s.holds if with_key else 0  # distinct users in the two variants

    def hold(i: int) -> Any:
        sku = skus[i // s.holds_per_sku]
        return engine.reserve(sku, user_id(offset + i), idempotency_key=keys[i] if keys else None)

    before = await _snapshot(engine, client, skus)
    result = await drive(s.clients, s.holds, hold, max_seconds=600, redis_url=url)
    after = await _snapshot(engine, client, skus)

    prefix = f"{label}{name}: "
    report.check(
        f"{prefix}every reserve succeeded",
        result.outcomes == {"ok": s.holds},
        f"{dict(result.outcomes)} of {s.holds:,}",
    )
    counters = await asyncio.gather(*(sku_counters(engine, sku) for sku in skus))
    wrong = [
        (sku, c)
        for sku, c, n in zip(skus, counters, units, strict=True)
        if not invariant_1(c)[0] or c["reserved"] != n or c["available"] != 0
    ]
    report.check(
        f"{prefix}every SKU: reserved == holds made, available 0, invariant 1",
        not wrong,
        f"{len(skus)} SKUs; wrong: {wrong[:3]}",
    )
    grown = {kind: after["entries"][kind] - before["entries"][kind] for kind in after["entries"]}
    expected = {
        "holds lists": s.holds,
        "holds zsets": 0,
        "open hashes": s.holds,
        "streams": s.holds,
        "idempotency hashes": s.holds if with_key else 0,
    }
    report.check(
        f"{prefix}holds, open records, events (and idempotency answers) each grew by exactly N",
        grown == expected,
        f"grew {grown}, expected {expected}",
    )
    replayed = await replayed_counters(engine, set(skus))
    report.check(
        f"{prefix}the streams replay to the counters",
        all(replayed.get(sku) == c for sku, c in zip(skus, counters, strict=True)),
        f"{len(skus)} SKUs",
    )
    if keys:
        repeats = range(0, s.holds, max(1, s.holds // s.repeats))
        first = [await hold(i) for i in repeats]
        again = [await hold(i) for i in repeats]
        unchanged = await asyncio.gather(*(sku_counters(engine, sku) for sku in skus))
        report.check(
            f"{prefix}a repeated call returns its first reservation and changes nothing",
            [r.id for r in first] == [r.id for r in again] and list(unchanged) == list(counters),
            f"{len(first)} calls repeated twice",
        )

    delta = {kind: after["bytes"][kind] - before["bytes"][kind] for kind in KINDS}
    total = after["used_memory"] - before["used_memory"]
    events = grown["streams"]
    return {
        "variant": name,
        "holds": s.holds,
        "skus": len(skus),
        "used_memory_delta": total,
        "bytes_per_hold": round(total / s.holds, 1),
        "bytes_per_event": round(delta["streams"] / events, 1) if events else 0.0,
        "bytes_by_kind": delta,
        "other_bytes": total - sum(delta.values()),
        "keys_by_kind": after["keys"],
        "entries_grown": grown,
        "before": before,
        "after": after,
        "load": result.as_dict(),
    }


async def measure(url: str, s: Settings, tag: str, report: Report, label: str = "") -> dict[str, Any]:
    """Both variants on one server: the figures the memory report (and the servers comparison) print."""
    engine = async_engine(url)
    await engine.load_scripts()
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return {
            "without_key": await _variant(engine, client, url, s, tag, False, report, label),
            "with_key": await _variant(engine, client, url, s, tag, True, report, label),
        }
    finally:
        await engine.close()
        await client.aclose()


def megabytes_per_million(bytes_per_hold: float) -> float:
    """What a million held reservations need, in MB (10^6 bytes)."""
    return bytes_per_hold * 1_000_000 / 1e6


def run_scenario(options: Options) -> Report:
    s = Settings.for_run(options)
    report = Report("memory", {**asdict(s), "skus": s.skus, "user_id": user_id(0)})
    with running(options.redis_url, server=options.server) as servers:
        report.servers["redis"] = redis_version(servers.redis_url)
        figures = run(measure(servers.redis_url, s, options.run_id, report), s.loop)
    report.figures = figures
    plain, keyed = figures["without_key"], figures["with_key"]
    for what, value, target in (
        ("bytes per held reservation", plain["bytes_per_hold"], TARGETS["per_hold"]),
        (
            "bytes per held reservation with idempotency key",
            keyed["bytes_per_hold"],
            TARGETS["per_hold_with_key"],
        ),
        ("bytes per stream event", plain["bytes_per_event"], TARGETS["per_event"]),
    ):
        report.ratio(f"{what} / {target} target (issue 14)", value, target, "≤ 1", value <= target)
    report.table(
        f"{s.holds:,} held reservations per variant, {s.skus:,} SKUs of {s.holds_per_sku:,} units, "
        "each hold a distinct user; no worker (every event still in its stream)",
        [
            "variant",
            "used_memory Δ bytes",
            "bytes per hold",
            "bytes per event",
            "bytes per hold once applied (− its event)",
            "1M holds need, MB",
        ],
        [
            [
                f["variant"],
                f["used_memory_delta"],
                f["bytes_per_hold"],
                f["bytes_per_event"],
                round(f["bytes_per_hold"] - f["bytes_per_event"], 1),
                round(megabytes_per_million(f["bytes_per_hold"])),
            ]
            for f in (plain, keyed)
        ],
    )
    report.table(
        "Where a hold's bytes go: MEMORY USAGE (SAMPLES 0) Δ per hold, by key kind",
        ["key kind", "keys", "without key: bytes/hold", "with key: bytes/hold"],
        [
            [
                kind,
                keyed["keys_by_kind"][kind],
                round(plain["bytes_by_kind"][kind] / s.holds, 1),
                round(keyed["bytes_by_kind"][kind] / s.holds, 1),
            ]
            for kind in KINDS
        ]
        + [
            [
                "other (INFO used_memory beyond the keys' own usage)",
                "",
                round(plain["other_bytes"] / s.holds, 1),
                round(keyed["other_bytes"] / s.holds, 1),
            ],
            ["total (INFO used_memory Δ)", "", plain["bytes_per_hold"], keyed["bytes_per_hold"]],
        ],
    )
    load = plain["load"]
    report.notes.append(
        f"The holds were made at {load['attempts_per_s']:,.0f} reserves/s by {s.clients} clients "
        f"(client {load['client_us_per_call']} µs, Redis {load.get('redis_us_per_call', 0)} µs of CPU per "
        "reserve, the full work each time); the figures above are the server's memory, not its speed."
    )
    report.notes.append(
        "A hold lives in four places: a field of its partition's open hash (the record), an entry of its "
        "SKU's holds list (the deadline; the sorted set only for holds out of the list's order), a field "
        "of the SKU hash (the user's held count) and an entry of the partition stream until the worker has "
        "applied and trimmed it; with an idempotency key also a field of the partition's idempotency hash "
        "for 24-48 h. 'other' is what INFO counts beyond MEMORY USAGE of those keys (the allocator's "
        "rounding, the keyspace's own tables)."
    )
    return report
