"""Real concurrency over real sockets: a sell-out of 1,000 buyers for 100 units, and a tiny Redis pool
that makes requests wait instead of failing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from flashsale.engine import Engine, Sale, replay

from tests.api.conftest import SKU, ApiServer

V1 = "/api/v1"


async def _send_all(url: str, requests: list[tuple[str, str, dict[str, str], Any]]) -> list[tuple[int, Any]]:
    """Sends every request at once, each on its own connection, and collects (status, JSON body)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def one(method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
            async with session.request(method, path, json=body, headers=headers) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(*request) for request in requests))


def test_a_thousand_concurrent_buyers_for_a_hundred_units_get_exactly_100_reservations(
    api: ApiServer, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=100, per_user_limit=1)
    requests = [
        ("POST", f"{V1}/reservations", api.auth(f"buyer-{i}"), {"skuId": SKU, "quantity": 1})
        for i in range(1000)
    ]
    answers = asyncio.run(_send_all(api.url, requests))

    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 100, 400: 900}, statuses
    assert {body["error"] for status, body in answers if status == 400} == {"OUT_OF_STOCK"}
    winners = {body["userId"] for status, body in answers if status == 201}
    assert len(winners) == 100
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved, sale.sold, sale.total) == (0, 100, 0, 100)
    events = [e for p in range(engine.config.partitions) for e in engine.read_events(p)]
    assert sum(e.type == "reserved" for e in events) == 100
    counters = replay(events)[SKU]
    assert (counters.available, counters.reserved) == (0, 100)
    assert all(engine.user_counts(SKU, user).held == 1 for user in winners)


def test_a_two_connection_redis_pool_makes_500_concurrent_requests_wait_not_fail(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    api = start_server(redis_max_connections=2, redis_pool_timeout_s=30.0)
    load_sale(total=50, per_user_limit=1)
    requests: list[tuple[str, str, dict[str, str], Any]] = []
    for i in range(500):
        if i % 2:
            requests.append(("POST", f"{V1}/reservations", api.auth(f"user-{i}"), {"skuId": SKU}))
        else:  # plain reads take a pooled connection each, unlike the pipelined scripts
            requests.append(("GET", f"{V1}/products/{SKU}", {}, None))
    answers = asyncio.run(_send_all(api.url, requests))

    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: 250, 201: 50, 400: 200}, statuses
    assert engine.get_sale(SKU).reserved == 50
