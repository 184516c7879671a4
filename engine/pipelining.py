"""Auto-pipelining for the asyncio client: concurrent calls share pipelined round trips.

Like ioredis's ``enableAutoPipelining``: every EVALSHA issued during one turn of the event loop joins a
queue; a sender takes whatever is queued and writes it as one pipeline; while that round trip is in flight
the next calls queue up and leave together with the next pipeline. One process thus approaches what Redis
itself can do, instead of paying a network round trip and a syscall pair per call.

This is the hot path of every reservation, so it skips redis-py's Pipeline object: each call is packed to
RESP once, in C (``hiredis.pack_command``), when it is queued; a batch is one bytes write; its replies are
read back on the same connection by a hiredis reader (parsed in C, error replies included). A sender
keeps one connection from the client's pool while the queue has calls (at most ``max_inflight`` senders),
so there is no pool round trip per batch, and gives it back when the queue runs dry. And no call leaves
a reference cycle behind (see ``evalsha``): in a sold-out sale nearly every call is a refusal, and cycles
per refusal cost a third of the CPU in GC.

With ``wait=(n, timeout_ms)`` (FLASHSALE_REDIS_WAIT_REPLICAS) a batch holding a script call ends with
``WAIT n timeout_ms`` on the same connection: one WAIT covers every write of the batch, and a script's reply
is released only when n replicas have it; when fewer confirmed it in time, each script call that did not
fail gets ``NotReplicated`` instead (its change is on the master, and may be lost with it).

Replies come back in order; each caller gets its own reply or its own error. A connection error fails
every call of that pipeline: the caller cannot know whether its script ran, which is why reserve and
checkout take idempotency keys. Nothing here retries a script by itself, so none ever runs twice; the one
resend is of calls refused with NOSCRIPT, which Redis did not run.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import NotReplicated

# A queued call: the command packed, its caller's future, and whether it may write (a script call).
_Pending = tuple[bytes, "asyncio.Future[Any]", bool]


def _pack(sha: str, keys: tuple[str, ...], args: tuple[str | int, ...]) -> bytes:
    """One EVALSHA in RESP, ready to write."""
    command: tuple[str | int, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub wants a 1-tuple
    return packed


class AutoPipeline:
    def __init__(
        self,
        redis: Redis,
        reload_scripts: Callable[[], Awaitable[None]],
        *,
        max_batch: int = 256,
        max_inflight: int = 4,
        wait: tuple[int, int] | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        # (replicas, timeout ms) of the WAIT that ends each batch with a script call, or None.
        self._wait = wait
        self._wait_command = hiredis.pack_command(("WAIT", *wait)) if wait else b""  # type: ignore[arg-type]
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
        self._queue.append((_pack(sha, keys, args), future, True))
        if not self._start_pending and self._senders < self._max_inflight:
            # Wait for the rest of this loop turn's calls, then send them together.
            self._start_pending = True
            loop.call_soon(self._start_sender)
        try:
            return await future
        finally:
            # An error reply raised here carries a traceback holding this frame, which holds the future,
            # which holds the error: a reference cycle per refusal, left for the garbage collector.
            # Dropping the future breaks it, so refusals (most calls in a sold-out sale) cost no GC time.
            del future

    async def submit(self, packed: bytes, writes: bool = False) -> Any:
        """Any command already packed to RESP (the cluster router's path: scripts, ``writes``, and plain
        reads). The body of ``evalsha`` again rather than a call from it, so the single-Redis hot path keeps
        one frame."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((packed, future, writes))
        if not self._start_pending and self._senders < self._max_inflight:
            self._start_pending = True
            loop.call_soon(self._start_sender)
        try:
            return await future
        finally:
            del future

    def _start_sender(self) -> None:
        self._start_pending = False
        if self._queue and self._senders < self._max_inflight:
            self._senders += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        connection: AbstractConnection | None = None
        try:
            while self._queue:
                size = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(size)]
                if connection is None:
                    connection = await self._connection(batch)
                    if connection is None:
                        continue
                await self._send(connection, batch)
        finally:
            self._senders -= 1
            if connection is not None:
                # Back to the pool as soon as the queue is empty: plain reads share that pool, and a
                # pipeline that kept its connections would starve them (a small pool then never frees).
                await self._redis.connection_pool.release(connection)

    async def _connection(self, batch: list[_Pending]) -> AbstractConnection | None:
        """A connection for this sender, or None after failing the batch when none can be had."""
        try:
            connection: AbstractConnection = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        except (Exception, asyncio.CancelledError) as error:
            self._fail(batch, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return None
        return connection

    async def _send(self, connection: AbstractConnection, batch: list[_Pending]) -> None:
        try:
            replies = await self._round_trip_waited(connection, batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # Redis lost its script cache (restart, SCRIPT FLUSH): NOSCRIPT means nothing ran.
                await self._reload_scripts()
                again = await self._round_trip_waited(connection, [batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (Exception, asyncio.CancelledError) as error:
            # The connection is in an unknown state (part of the replies unread): start it afresh.
            await asyncio.shield(connection.disconnect(nowait=True))
            self._fail(batch, error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for (_, future, _writes), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up waiting
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _round_trip_waited(self, connection: AbstractConnection, batch: list[_Pending]) -> list[Any]:
        """The batch's replies; in WAIT mode, a batch that may write ends with WAIT, and the replies of its
        script calls become NotReplicated when fewer replicas than asked confirmed them in time."""
        commands = [packed for packed, _, _ in batch]
        if self._wait is None or not any(writes for _, _, writes in batch):
            return await self._round_trip(connection, commands)
        replies = await self._round_trip(connection, [*commands, self._wait_command])
        return release_when_replicated(replies, [writes for _, _, writes in batch], self._wait)

    @staticmethod
    async def _round_trip(connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
        """Writes the commands as one pipeline and reads one reply (or error reply) per command."""
        await connection.send_packed_command(b"".join(commands), check_health=False)
        # One deadline for the whole batch (the connection's socket timeout) rather than a timer per reply.
        try:
            async with asyncio.timeout(connection.socket_timeout):
                stream = getattr(connection, "_reader", None)
                if isinstance(stream, asyncio.StreamReader):
                    return await _read_replies(stream, connection, len(commands))
                return await _read_replies_through_redis_py(connection, len(commands))
        except TimeoutError:
            raise RedisTimeoutError(f"no reply within {connection.socket_timeout}s") from None
        except OSError as error:
            # The raw stream raises the socket's own error; callers (the API's 503) expect redis-py's.
            raise RedisConnectionError(f"connection to Redis lost mid-pipeline: {error}") from error

    @staticmethod
    def _fail(batch: list[_Pending], error: BaseException) -> None:
        for _, future, _writes in batch:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def release_when_replicated(replies: list[Any], writes: list[bool], wait: tuple[int, int]) -> list[Any]:
    """The replies of a batch that ended with ``WAIT n timeout`` (its reply last): as they are when n
    replicas confirmed, else NotReplicated for each call that may have written and was not refused. A
    script refuses with an error reply, or, for reserve.lua's sold-out answer, a negative integer: neither
    wrote anything a failover could lose (reserve's due_first is a bound any earlier value of which holds)."""
    acked = replies.pop()
    wanted, timeout_ms = wait
    if isinstance(acked, int) and acked >= wanted:
        return replies
    if isinstance(acked, Exception):  # WAIT itself refused (e.g. on a replica): nothing is confirmed
        acked = 0
    error = NotReplicated(
        f"the change is on the master, but {acked} of the {wanted} replicas asked for confirmed it within "
        f"{timeout_ms} ms: it may be lost if the master fails now (retry with the same idempotency key)"
    )
    return [
        error
        if may_write and not isinstance(reply, Exception) and not (isinstance(reply, int) and reply < 0)
        else reply
        for reply, may_write in zip(replies, writes, strict=True)
    ]


def _error_reply(message: str) -> ResponseError:
    # The same classes redis-py's parser gives; the message whole, so engine.errors can read its code.
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


async def _read_replies(
    stream: asyncio.StreamReader, connection: AbstractConnection, count: int
) -> list[Any]:
    """Reads ``count`` replies straight off the connection's socket stream with a hiredis reader.

    redis-py's per-reply path costs three coroutines, a timeout check and an exception per error reply;
    here a socket read yields every complete reply in it, parsed in C. Safe because this sender owns the
    connection until all its replies are read, so redis-py's own parser has nothing buffered meanwhile.
    """
    encoder = connection.encoder
    reader = (
        hiredis.Reader(replyError=_error_reply, encoding=encoder.encoding, errors=encoder.encoding_errors)
        if encoder.decode_responses
        else hiredis.Reader(replyError=_error_reply)
    )
    replies: list[Any] = []
    while len(replies) < count:
        data = await stream.read(65536)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    if len(replies) != count:
        raise RedisConnectionError(f"{len(replies)} replies to {count} commands")
    return replies


async def _read_replies_through_redis_py(connection: AbstractConnection, count: int) -> list[Any]:
    """The same through redis-py's public reader (a redis-py whose connection has no stream reader)."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response(timeout=math.inf))
        except ResponseError as error:  # an error reply: this call's own answer
            # Without its traceback (this frame, whose `replies` holds it): no cycle to collect.
            replies.append(error.with_traceback(None))
    return replies
