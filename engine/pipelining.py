"""Auto-pipelining for the asyncio client: concurrent calls share pipelined round trips.

Like ioredis's ``enableAutoPipelining``: every EVALSHA issued during one turn of the event loop joins a
queue; a sender takes whatever is queued and sends it as one pipeline; while that round trip is in flight
the next calls queue up and leave together with the next pipeline. One process thus approaches what Redis
itself can do, instead of paying a network round trip and a syscall pair per call.

Replies come back in order; each caller gets its own reply or its own error. A connection error fails
every call of that pipeline: the caller cannot know whether its script ran, which is why reserve and
checkout take idempotency keys. Nothing here retries a script by itself, so none ever runs twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_Pending = tuple[str, tuple[str, ...], tuple[str | int, ...], "asyncio.Future[Any]"]


class AutoPipeline:
    def __init__(
        self,
        redis: Redis,
        reload_scripts: Callable[[], Awaitable[None]],
        *,
        max_batch: int = 256,
        max_inflight: int = 4,
    ) -> None:
        self._redis = redis
        self._reload_scripts = reload_scripts
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: deque[_Pending] = deque()
        self._senders = 0
        self._start_pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def evalsha(self, sha: str, keys: tuple[str, ...], args: tuple[str | int, ...]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((sha, keys, args, future))
        if not self._start_pending and self._senders < self._max_inflight:
            # Wait for the rest of this loop turn's calls, then send them together.
            self._start_pending = True
            loop.call_soon(self._start_sender)
        return await future

    def _start_sender(self) -> None:
        self._start_pending = False
        if self._queue and self._senders < self._max_inflight:
            self._senders += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                size = min(len(self._queue), self._max_batch)
                await self._send([self._queue.popleft() for _ in range(size)])
        finally:
            self._senders -= 1

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            replies = await self._execute(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # Redis lost its script cache (restart, SCRIPT FLUSH): NOSCRIPT means nothing ran.
                await self._reload_scripts()
                again = await self._execute([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (Exception, asyncio.CancelledError) as error:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up waiting
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[_Pending]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for sha, keys, args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
