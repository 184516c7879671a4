"""What reconciliation compares: the records of one store, as plain dicts with the fold's field names.

Both stores are read into the same shapes (``engine.events`` names: a reservation has sku, user, quantity,
status, created_at, expires_at, order_id, pay_until, confirmed_at, ended_at; an order reservation_id, sku,
user, quantity, unit_price_cents, total_cents, status, payment_method, transaction_id, failure_reason,
created_at, updated_at; a sale its settings and counters; a waiting room its settings and the counts the log
carries, ``ROOM_SETTINGS`` + ``ROOM_COUNTS``), so checks and repairs never care which store a record came
from. Times are ms since the epoch; "none" is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashsale.engine.bounds import RETENTION_MS
from flashsale.engine.events import Counters, Event
from flashsale.engine.keys import partition_of

COUNTERS = ("total", "available", "reserved", "sold")
SETTINGS = (
    "name",
    "price_cents",
    "flash_price_cents",
    "per_user_limit",
    "starts_at",
    "ends_at",
    "reservation_ttl_ms",
    "paused",
)
# A waiting room as both stores hold it: its settings (the SKU hash's waiting_room, wr_* fields; PostgreSQL's
# waiting_rooms row) and what the log counts (queue_admitted, queue_closed events). The line, the admissions
# and the token bucket are Redis's alone (README, Waiting room): no event carries them.
ROOM_SETTINGS = ("on", "opens_at", "admit_per_s", "stock_factor", "admission_ttl_ms")
ROOM_COUNTS = ("admitted", "sent_away")
OPEN = "RESERVED"
COUNTED_ORDERS = ("CONFIRMED", "FULFILLED")
LIVE_ORDERS = ("PENDING", "CONFIRMED")  # kept in Redis for good; the others for the retention period
# An entity whose retention ends within this margin of the snapshot may or may not still be in Redis:
# it is compared in neither direction.
RETENTION_MARGIN_MS = 3600 * 1000

Record = dict[str, Any]


@dataclass(slots=True)
class StoreState:
    """One store's view: sales (settings + counters), per-user counts and the entities in the window."""

    sales: dict[str, Record] = field(default_factory=dict)
    users: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (sku, user) -> held, bought
    reservations: dict[str, Record] = field(default_factory=dict)
    orders: dict[str, Record] = field(default_factory=dict)
    rooms: dict[str, Record] = field(default_factory=dict)  # sku -> ROOM_SETTINGS + ROOM_COUNTS


@dataclass(slots=True)
class RoomLine:
    """What Redis alone keeps of a waiting room: who is in line and who is admitted (for its own checks)."""

    line: set[str]  # users in line
    join_times: int  # entries of the joined-at hash (one per user in line)
    admissions: dict[str, int]  # user -> deadline ms, negated once used
    lapsed: int  # admissions that lapsed unused (the room hash's count)
    used: int  # used admissions past their deadline, dropped from the admitted set
    read_at: int  # ms, Redis's clock when these were read

    def live(self) -> set[str]:
        """Users whose admission is live (used or not): past its deadline an admission record is dead
        until the admitter drops it, and its shopper may already have joined the line again."""
        return {u for u, score in self.admissions.items() if abs(score) > self.read_at}

    def admitted_in_line(self) -> list[str]:
        return sorted(self.line & self.live())


@dataclass(frozen=True, slots=True)
class UnreadableNode:
    """A Redis node that could not be read: its partitions were left out of the snapshot (and the checks)."""

    node: str  # host:port
    partitions: tuple[int, ...]
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "partitions": list(self.partitions), "error": self.error}


@dataclass(slots=True)
class RedisState(StoreState):
    holds: dict[str, dict[str, int]] = field(default_factory=dict)  # sku -> reservation id -> deadline
    # (sku, partition: one per stock bucket) -> its holds list's entries in order, (reservation id,
    # deadline); ended holds' entries may remain (lua/includes/holds.lua)
    due: dict[tuple[str, int], list[tuple[str, int]]] = field(default_factory=dict)
    # (sku, partition) -> its SKU hash's due_first, where set: a bound at or before every open hold's
    # deadline, which reserve.lua's sold-out refusal trusts
    due_first: dict[tuple[str, int], int] = field(default_factory=dict)
    lines: dict[str, RoomLine] = field(default_factory=dict)  # sku -> its waiting room's line
    unapplied: dict[int, list[Event]] = field(default_factory=dict)  # partition -> events after the offset
    now_ms: int = 0
    nodes: dict[int, str] = field(default_factory=dict)  # partition -> the node serving it (host:port)
    unreadable: list[UnreadableNode] = field(default_factory=list)

    def node_of(self, sku: str) -> str | None:
        """The node serving the SKU's partition (None when the snapshot did not record the nodes)."""
        return self.nodes.get(partition_of(sku, len(self.nodes))) if self.nodes else None

    def unapplied_events(self) -> list[Event]:
        return [e for p in sorted(self.unapplied) for e in self.unapplied[p]]


@dataclass(slots=True)
class PostgresState(StoreState):
    offsets: dict[int, str] = field(default_factory=dict)
    # Per SKU, what PostgreSQL's own rows add up to: units in open holds, units in counted orders.
    sums: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    redis: RedisState
    postgres: PostgresState

    @property
    def cutoff_ms(self) -> int:
        return cutoff(self.redis.now_ms)


def cutoff(now_ms: int) -> int:
    """Entities that ended before this are no longer Redis's to hold (or about to go): not compared."""
    return now_ms - RETENTION_MS + RETENTION_MARGIN_MS


def counters(sale: Record | None) -> Counters | None:
    if sale is None or any(sale.get(n) is None for n in COUNTERS):
        return None
    # moving: units between two stock buckets of the SKU (engine/buckets.py); 0 without buckets.
    return Counters(**{n: int(sale[n]) for n in COUNTERS}, moving=int(sale.get("moving") or 0))


def fmt(c: Counters | None) -> str:
    if c is None:
        return "missing"
    text = " ".join(f"{n}={getattr(c, n)}" for n in COUNTERS)
    return f"{text} moving={c.moving}" if c.moving else text


def room_text(room: Record | None, names: tuple[str, ...] = ROOM_SETTINGS + ROOM_COUNTS) -> str:
    if room is None:
        return "none"
    return " ".join(f"{n}={room.get(n)}" for n in names)


def in_window(record: Record, kind: str, cutoff_ms: int) -> bool:
    """Whether Redis must hold this record now: open ones always, ended ones until their retention ends."""
    if kind == "reservation":
        return record["status"] == OPEN or (record.get("ended_at") or 0) >= cutoff_ms
    return record["status"] in LIVE_ORDERS or (record.get("updated_at") or 0) >= cutoff_ms


def deadline(reservation: Record) -> int:
    """An open hold's deadline: its payment grace while an order pays for it, else its expiry."""
    if reservation.get("order_id") and reservation.get("pay_until"):
        return int(reservation["pay_until"])
    return int(reservation["expires_at"])
