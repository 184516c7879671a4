"""A partition the worker stopped: an event a sink can never take, or a stream that lost events.

A sink that is down (a connection refused, a timeout, a broker away) is retried until it is back: that is
"transient". An error that no retry can cure is "permanent": PostgreSQL refusing the data (a value out of
range, a constraint, a missing column: the schema is behind the code), an entry this worker cannot read (a
newer engine wrote it), Kafka refusing a message (too large). Retrying those forever would stop the
partition silently and keep its stream from ever being trimmed. Instead the worker applies everything
before the event, then stops the partition loudly: an error log, a mark in the partition's progress hash
(``stalled_*`` fields: what ``flashsale worker lag`` and the ``flashsale_writeback_partition_stalled``
metric show), and it keeps the lease so no other worker trips on the same event. The mark stays until an
operator has fixed the cause and runs ``flashsale worker resume PARTITION``; the worker then retries.

Lost events are reported the same way: at every takeover the worker checks that the stream still holds
the entry at PostgreSQL's applied offset (the trim always keeps it). When it does not, Redis lost events
PostgreSQL already has (a restart without AOF, an older copy restored), and applying the new events on top
would make PostgreSQL drift further; ``flashsale reconcile --repair redis-from-postgres`` rebuilds Redis and
marks the stream as continuing after that offset (``rebuilt_after``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from flashsale.engine.events import UnknownEvent
from flashsale.engine.keys import Partition
from flashsale.engine.nodes import AsyncClient

STALL_FIELDS = ("stalled_at", "stalled_sink", "stalled_event", "stalled_error")
_PERMANENT_POSTGRES = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgrammingError,
    psycopg.errors.NotSupportedError,
)


class PermanentSinkError(Exception):
    """An error no retry can cure; ``event_id`` is the stream id of the event it stopped at."""

    def __init__(self, sink: str, event_id: str, error: BaseException | str) -> None:
        super().__init__(f"{sink} cannot take event {event_id}: {error}")
        self.sink = sink
        self.event_id = event_id
        self.error = str(error)


def is_permanent(error: BaseException) -> bool:
    """Whether retrying cannot cure it (see the module's description)."""
    if isinstance(error, PermanentSinkError | UnknownEvent):
        return True
    if isinstance(error, psycopg.Error):
        return isinstance(error, _PERMANENT_POSTGRES)
    return bool(getattr(error, "permanent", False))  # the Kafka publisher marks its own


@dataclass(frozen=True, slots=True)
class Stall:
    partition: int
    at_ms: int
    sink: str
    event_id: str
    error: str


def stall_from_fields(partition: int, fields: dict[str, Any]) -> Stall | None:
    """The mark in a progress hash (HGETALL or HMGET of STALL_FIELDS), or None when there is none."""
    values = [fields.get(name) for name in STALL_FIELDS]
    if values[0] is None:
        return None
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return Stall(partition, int(text[0]), text[1], text[2], text[3])


async def mark(client: AsyncClient, partition: Partition, error: PermanentSinkError) -> None:
    await client.hset(
        partition.writeback_progress(),
        mapping={
            "stalled_at": int(time.time() * 1000),
            "stalled_sink": error.sink,
            "stalled_event": error.event_id,
            "stalled_error": error.error[:500],
        },
    )


async def read(client: AsyncClient, partition: Partition) -> Stall | None:
    values = await client.hmget(partition.writeback_progress(), list(STALL_FIELDS))
    return stall_from_fields(partition.index, dict(zip(STALL_FIELDS, values, strict=True)))


def clear_fields() -> tuple[str, ...]:
    """The fields ``flashsale worker resume`` deletes."""
    return STALL_FIELDS
