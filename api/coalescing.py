"""Single-flight reads: concurrent requests for the same catalog read share one trip to Redis.

Shoppers poll the catalog; during a sale thousands ask for the same counters at once. Each caller
still gets an answer read after it asked (or during its own request), never a cached older one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[Any]] = {}

    async def __call__(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.ensure_future(read())
            self._in_flight[key] = future
            future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        # Shielded: one caller hanging up must not cancel the read the others are waiting for.
        result: T = await asyncio.shield(future)
        return result
