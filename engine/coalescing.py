"""Coalesced reserves: the reserves an asyncio client has for one SKU at one moment, in one script call.

In a flash sale one SKU takes nearly every call, and each reserve.lua call pays Redis again for what does
not depend on the shopper: the call itself, the SKU's settings, the clock, the backlog's length, a write to
each of the SKU hash, its holds list and the open hash. ``ReserveCoalescer`` gathers the reserves without an
idempotency key (a SKU in one stock bucket) that arrive for a SKU during one turn of the event loop, those
held to the users' shared rate apart from those that are not, and sends each lot as one
``lua/reserve_many.lua`` call, which judges them in turn by reserve.lua's fast
path and writes each grant's record and event as reserve.lua would. An item it cannot judge there (answer 0:
a limit refusal, lapsed holds to end, the sale not open, a waiting room, bad input) goes through reserve.lua
on its own, nothing having been written for it. A SKU with one call waiting goes through reserve.lua
directly, so a quiet sale pays nothing for this.

What a caller sees is what ``AsyncEngine.reserve`` would give it alone: its Reservation or its refusal. The
items of one call are judged in the order they arrived; an item sent on to reserve.lua is judged after the
rest of its call (concurrent calls have no order of their own to keep). A connection error fails every item
of the call, as a pipeline's does (engine/pipelining.py): the caller cannot know whether it was granted, the
same as for a single call without an idempotency key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from .errors import from_reply
from .keys import new_reservation_id
from .models import Reservation, reservation_from_reserve, sold_out
from .operations import Call, Operations, RateLimit, identifier

# A queued reserve: user, quantity, its caller's future.
_Item = tuple[str, int, "asyncio.Future[Reservation]"]
# Reserves coalesce with those of the same SKU held to the same rate (or to none).
_Group = tuple[str, RateLimit | None]


class ReserveCoalescer:
    def __init__(
        self,
        ops: Operations,
        run: Callable[[Call[Any]], Awaitable[Any]],
        *,
        max_items: int,
    ) -> None:
        if max_items < 2:
            raise ValueError("coalescing needs at least 2 items per call")
        self._ops = ops
        self._run = run
        self._max_items = max_items
        self._waiting: dict[_Group, list[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # What was sent, for the benchmark and tests: coalesced script calls, the items in them, and those
        # of them that went on through reserve.lua.
        self.calls = 0
        self.items = 0
        self.passed_on = 0
        # Told of each coalesced call once it is answered: its items, and how many it passed on (the API
        # sets its metrics here; the engine imports nothing of the layers above).
        self.observe: Callable[[int, int], None] | None = None

    async def reserve(self, sku: str, user: str, quantity: int, rate: RateLimit | None = None) -> Reservation:
        # The input checked as Operations.reserve checks it: bad input raises here, before anything is queued.
        identifier(sku, "sku")
        identifier(user, "user id")
        future: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        held_to = rate if rate is not None and rate.per_s > 0 else None
        self._queue((sku, held_to), (user, quantity, future))
        try:
            return await future
        finally:
            # A refusal raised here has this frame in its traceback: a frame that still held the future
            # (or the SKU's queue, which holds it) would be a reference cycle per refusal, left for the
            # garbage collector (engine/pipelining.py).
            del future

    def _queue(self, group: _Group, item: _Item) -> None:
        waiting = self._waiting.get(group)
        if waiting is None:
            waiting = self._waiting[group] = []
            asyncio.get_running_loop().call_soon(self._send_waiting, group)
        waiting.append(item)

    def _send_waiting(self, group: _Group) -> None:
        items = self._waiting.pop(group)
        for start in range(0, len(items), self._max_items):
            self._spawn(self._send(group, items[start : start + self._max_items]))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, group: _Group, items: list[_Item]) -> None:
        if len(items) == 1:
            await self._alone(group, items[0])
            return
        sku, rate = group
        self.calls += 1
        self.items += len(items)
        # Ids made here, for the items that go in this call (one that goes alone gets reserve's own).
        p = self._ops.keys.for_sku(sku)
        try:
            answers = await self._run(
                self._ops.reserve_many(
                    sku, [(user, quantity, new_reservation_id(p)) for user, quantity, _ in items], rate
                )
            )
        except (Exception, asyncio.CancelledError) as error:
            for *_, future in items:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        passed_on = 0
        for item, answer in zip(items, answers, strict=True):
            future = item[2]
            if future.done():  # its caller gave up waiting (a reserve passed on is not sent then)
                continue
            if answer == 0:
                passed_on += 1
                self._spawn(self._alone(group, item))
            elif isinstance(answer, int):  # sold out: -<ms until the first hold ends>
                future.set_exception(sold_out(sku, -answer))
            elif isinstance(answer, ResponseError):
                future.set_exception(from_reply(str(answer)) or answer)
            else:
                future.set_result(reservation_from_reserve(sku, item[0], answer))
        self.passed_on += passed_on
        if self.observe is not None:
            self.observe(len(items), passed_on)

    async def _alone(self, group: _Group, item: _Item) -> None:
        """One reserve through reserve.lua (its full checks when the fast path does not answer it)."""
        (sku, rate), (user, quantity, future) = group, item
        try:
            reservation = await self._run(self._ops.reserve(sku, user, quantity, None, rate))
        except (Exception, asyncio.CancelledError) as error:
            if not future.done():
                future.set_exception(error.with_traceback(None))
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        if not future.done():
            future.set_result(reservation)

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
