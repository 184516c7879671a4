"""The scripts' side of sold-out answers from memory (api/soldout.py): every change that may turn a sold-out
refusal into a success publishes the SKU on its partition's stock channel, in the same script; the paths
that never raise stock (a reserve that succeeds or is refused, confirm, a checkout, units taken away)
publish nothing; and the sold-out refusal says what an API process needs to answer the same from memory."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from flashsale.engine import Engine, OutOfStock, SaleSettings

TTL_MS = 1000  # the shortest hold there is


@pytest.fixture
def announced(engine: Engine, redis_url: str) -> Iterator[Callable[[], list[str]]]:
    """The SKUs announced on any partition's stock channel since the last call."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    channels = [p.stock_channel() for p in engine.keys.all()]
    pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = pubsub.get_message(timeout=5.0)
        assert message is not None
        assert message["type"] == "subscribe"
        confirmed += 1

    def drain() -> list[str]:
        client.ping()  # every message published before this answer is on the subscriber's socket
        skus = []
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            assert message["channel"] == engine.keys.for_sku(message["data"]).stock_channel()
            skus.append(message["data"])
        return skus

    drain()
    yield drain
    pubsub.close()
    client.close()


def _sale(engine: Engine, sku: str, **fields: object) -> None:
    values: dict[str, object] = {"total": 1, "reservation_ttl_ms": 600_000, "per_user_limit": 5}
    values.update(fields)
    engine.load_sale(SaleSettings(sku=sku, **values))  # type: ignore[arg-type]


def _sleep_past(deadline_ms: int, engine: Engine) -> None:
    seconds, micros = engine.redis.time()
    time.sleep(max(0, deadline_ms - (seconds * 1000 + micros // 1000) + 20) / 1000)


def test_every_way_stock_comes_back_is_announced_once(
    engine: Engine, announced: Callable[[], list[str]]
) -> None:
    _sale(engine, "CH-RELEASE")
    hold = engine.reserve("CH-RELEASE", "alice")
    announced()
    engine.release(hold.id, "alice")
    assert announced() == ["CH-RELEASE"]

    _sale(engine, "CH-RESTOCK", total=0)
    announced()
    engine.restock("CH-RESTOCK", 3)
    assert announced() == ["CH-RESTOCK"]

    _sale(engine, "CH-TOTAL", total=1)
    engine.reserve("CH-TOTAL", "alice")
    announced()
    engine.load_sale(SaleSettings(sku="CH-TOTAL", total=2))
    assert announced() == ["CH-TOTAL"]
    engine.load_sale(SaleSettings(sku="CH-TOTAL", paused=True))
    assert announced() == ["CH-TOTAL"]  # every settings change: the window, the pause, the limit
    engine.load_sale(SaleSettings(sku="CH-TOTAL", paused=False))
    assert announced() == ["CH-TOTAL"]

    _sale(engine, "CH-CANCEL")
    order = engine.begin_checkout(engine.reserve("CH-CANCEL", "alice").id, "alice", "CREDIT_CARD")
    engine.confirm(order.id, "alice")
    announced()
    engine.cancel_order(order.id, "alice")  # a confirmed order: sold -> available
    assert announced() == ["CH-CANCEL"]

    _sale(engine, "CH-PAYING")
    order = engine.begin_checkout(engine.reserve("CH-PAYING", "alice").id, "alice", "CREDIT_CARD")
    announced()
    engine.cancel_order(order.id, "alice")  # cancelled while paying: reserved -> available
    assert announced() == ["CH-PAYING"]


def test_lapsed_holds_are_announced_by_the_sweep_once_per_sku_and_by_lazy_expiry(
    engine: Engine, announced: Callable[[], list[str]]
) -> None:
    _sale(engine, "CH-SWEEP", total=4, reservation_ttl_ms=TTL_MS)
    _sale(engine, "CH-LAZY", total=1, reservation_ttl_ms=TTL_MS)
    _sale(engine, "CH-FAIL", total=1, reservation_ttl_ms=TTL_MS)
    holds = [engine.reserve("CH-SWEEP", f"user-{n}") for n in range(4)]
    lazy = engine.reserve("CH-LAZY", "alice")
    paying = engine.reserve("CH-FAIL", "alice")
    order = engine.begin_checkout(paying.id, "alice", "CREDIT_CARD")  # kept for its payment grace
    announced()
    _sleep_past(max(h.expires_at for h in [*holds, lazy, paying]), engine)

    partition = engine.keys.for_sku("CH-SWEEP").index
    assert engine.expire(partition, limit=500) >= 4
    assert announced().count("CH-SWEEP") == 1  # four holds ended, one message

    engine.reserve("CH-LAZY", "bob")  # ends alice's lapsed hold first, then takes its unit
    assert announced() == ["CH-LAZY"]

    # The payment failed after the hold's own deadline: it is lapsed again, and reserve would end it.
    engine.fail_checkout(order.id, "alice")
    assert announced() == ["CH-FAIL"]


def test_what_never_raises_stock_publishes_nothing(
    engine: Engine, announced: Callable[[], list[str]]
) -> None:
    _sale(engine, "CH-QUIET", total=3)
    announced()
    hold = engine.reserve("CH-QUIET", "alice", 2)
    engine.restock("CH-QUIET", -1)
    with pytest.raises(OutOfStock):
        engine.reserve("CH-QUIET", "bob")  # the sold-out path, the hottest of a sale
    order = engine.begin_checkout(hold.id, "alice", "CREDIT_CARD")
    engine.confirm(order.id, "alice")
    engine.fulfil_order(order.id)
    assert announced() == []


def test_the_sold_out_refusal_says_units_left_and_when_the_first_hold_ends(engine: Engine) -> None:
    _sale(engine, "CH-MSG", total=3, reservation_ttl_ms=90_000)
    engine.reserve("CH-MSG", "alice", 2)
    with pytest.raises(OutOfStock) as refused:
        engine.reserve("CH-MSG", "bob", 2)
    match = re.fullmatch(
        r"sku CH-MSG has 1 units left; the first hold ends in (\d+) ms", refused.value.message
    )
    assert match is not None
    assert 85_000 < int(match.group(1)) <= 90_000

    _sale(engine, "CH-NONE", total=0)
    with pytest.raises(OutOfStock) as refused:
        engine.reserve("CH-NONE", "bob")
    assert refused.value.message == "sku CH-NONE has 0 units left; none is held"
