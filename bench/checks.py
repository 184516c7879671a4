"""Correctness checks a scenario makes after its load: straight from Redis, not through the scripts."""

from __future__ import annotations

from flashsale.engine import AsyncEngine, replay
from flashsale.engine.keys import partition_of


async def sku_counters(engine: AsyncEngine, sku: str) -> dict[str, int]:
    p = engine.keys.for_sku(sku)
    raw = await engine.redis.hmget(p.sku(sku), ["total", "available", "reserved", "sold"])
    return dict(zip(("total", "available", "reserved", "sold"), (int(v or 0) for v in raw), strict=True))


def invariant_1(counters: dict[str, int]) -> tuple[bool, str]:
    """available + reserved + sold == total, each >= 0 (ARCHITECTURE.md invariant 1)."""
    c = counters
    ok = c["available"] + c["reserved"] + c["sold"] == c["total"] and min(c.values()) >= 0
    return ok, f"total={c['total']} available={c['available']} reserved={c['reserved']} sold={c['sold']}"


async def replayed_counters(engine: AsyncEngine, skus: set[str]) -> dict[str, dict[str, int]]:
    """What the partition streams' events add up to for these SKUs (invariant 4: the stream is the log)."""
    partitions = {partition_of(sku, engine.config.partitions) for sku in skus}
    events = []
    for p in sorted(partitions):
        after = "-"
        while True:
            page = await engine.read_events(p, after=after, count=10_000)
            if not page:
                break
            events.extend(e for e in page if e.sku in skus)
            after = page[-1].stream_id
    totals = replay(events)
    return {
        sku: {"total": c.total, "available": c.available, "reserved": c.reserved, "sold": c.sold}
        for sku, c in totals.items()
    }
