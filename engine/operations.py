"""Each engine operation as a script call: which script, which keys, which arguments, how to read the reply.

The sync and asyncio clients both execute these, so the two cannot drift apart in semantics. Arguments are
few and short on purpose: every one costs Redis CPU on every call (README, Performance).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from .bounds import IDENTIFIER_PATTERN, LATE_PLACES, MAX_IDEMPOTENCY_KEY_CHARS, MAX_IDENTIFIER_CHARS
from .errors import InvalidArgument
from .keys import Keyspace, Partition, idempotency_field, new_order_id, new_reservation_id
from .models import (
    AdmitStep,
    Order,
    QueueStanding,
    Reservation,
    Sale,
    SaleSettings,
    WaitingRoom,
    admit_step_from_reply,
    from_pairs,
    reservation_from_record,
    reservation_from_reserve,
    sale_from_pairs,
    standing_from_reply,
)
from .settings import EngineConfig

T = TypeVar("T")

# The same rule as isIdentifier() in lua/includes/common.lua: ids become parts of key names.
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    script: str
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    parse: Callable[[Any], T]

    def with_keys(self, needed: tuple[str, ...]) -> Call[T]:
        """The same call with the keys a NEEDS_KEYS reply named added to its KEYS (arguments unchanged)."""
        return replace(self, keys=self.keys + tuple(k for k in needed if k not in self.keys))


# A script names the keys it needs beyond those it was given, before its first write: every key a script
# touches is in its KEYS (lua/includes/common.lua's needKeys). The clients send the call again with them.
NEEDS_KEYS = "NEEDS_KEYS "
# How often one call may be sent again for keys: the keys a call needs change only when what it reads
# changes between two sends (a hold lapsing, a checkout starting), so a few rounds always suffice.
MAX_KEY_ROUNDS = 8


# How many reservations and orders an Operations remembers the SKU (and reservation) of: they never change,
# so a checkout call can name its SKU's keys up front instead of learning them from a NEEDS_KEYS round
# trip. Bounded, oldest dropped first; a miss (another process made the hold) costs that round trip only.
KNOWN_ENTITIES = 65_536


def remember(known: dict[str, Any], key: str, value: Any) -> None:
    known[key] = value
    if len(known) > KNOWN_ENTITIES:
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):  # another thread got there first
            del known[next(iter(known))]


def needed_keys(message: str) -> tuple[str, ...]:
    """The keys a NEEDS_KEYS error reply (``message``, which starts with NEEDS_KEYS) names."""
    return tuple(message[len(NEEDS_KEYS) :].split())


def identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidArgument(f"{what} must be 1-{MAX_IDENTIFIER_CHARS} letters, digits or -_.@")
    return value


def text(value: str, what: str) -> str:
    """A free-text argument (payment method, reason, ...): its length is the script's to judge, but it
    must be text, or redis-py would fail to send it instead of the engine refusing it."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be text")
    return value


def _sale(reply: Any) -> Sale:
    return sale_from_pairs(reply)


def _answers(reply: Any) -> list[Any]:
    return list(reply)


def _pair(reply: Any) -> tuple[int, int]:
    return int(reply[0]), int(reply[1])


def _triple(reply: Any) -> tuple[int, int, int]:
    return int(reply[0]), int(reply[1]), int(reply[2])


def _entries(reply: Any) -> list[tuple[str, str]]:
    as_text = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    return list(zip(as_text[::2], as_text[1::2], strict=True))


def _admit_step(reply: Any) -> AdmitStep:
    return admit_step_from_reply(reply)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A user's request rate, checked in Redis by the script the request runs (lua/includes/ratelimit.lua):
    ``per_s`` requests a second on average, bursts of ``burst``; shared by every API process."""

    per_s: float
    burst: int

    def args(self) -> tuple[str, str]:
        """The script's two numbers: ms between requests at the rate, and the burst's tolerance in ms."""
        interval = 1000.0 / self.per_s
        return (f"{interval:.3f}", f"{interval * (max(self.burst, 1) - 1):.3f}")


def _rate_args(rate: RateLimit | None) -> tuple[str, str]:
    return rate.args() if rate is not None and rate.per_s > 0 else ("0", "0")


def _room_keys(p: Partition, sku: str) -> tuple[str, ...]:
    """The keys of a SKU's waiting room, in the order queue_join and queue_admit take them."""
    return (
        p.sku(sku),
        p.waiting_room(sku),
        p.queue(sku),
        p.admitted(sku),
        p.queue_joined(sku),
        p.queue_left(sku),
    )


def early_place() -> int:
    """A random place among those who join before the sale starts: 48 bits from the OS's generator (the
    script takes it as an argument so that it stays deterministic for replication)."""
    return int.from_bytes(os.urandom(6), "big") % LATE_PLACES


def _now_ms() -> int:
    return int(time.time() * 1000)


def _count(reply: Any) -> int:
    return int(reply)


class Operations:
    """Builds the script call for each operation."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.keys = Keyspace(config.partitions, config.prefix)
        self._backlog_limit = config.backlog_limit_events
        # Where an early joiner's random place comes from (a test may seed it).
        self.early_place: Callable[[], int] = early_place
        # This process's clock, ms: only to name the idempotency generations a keyed call reads (the
        # script asks for others when Redis's clock disagrees); a test may set it off.
        self.now_ms: Callable[[], int] = _now_ms
        # reservation id -> SKU, order id -> (reservation id, SKU), learnt from replies (KNOWN_ENTITIES).
        self._sku_of: dict[str, str] = {}
        self._order_of: dict[str, tuple[str, str]] = {}

    def _reservation(self, reservation: Reservation) -> Reservation:
        remember(self._sku_of, reservation.id, reservation.sku)
        return reservation

    def _order(self, reply: Any) -> Order:
        order = from_pairs(reply, Order)
        remember(self._order_of, order.id, (order.reservation_id, order.sku))
        return order

    def _hold_keys(self, p: Partition, reservation_id: str) -> tuple[str, ...]:
        """The SKU keys of a reservation this process has seen (else none: the script asks for them)."""
        sku = self._sku_of.get(reservation_id)
        return (p.sku(sku), p.holds(sku)) if sku is not None else ()

    def _order_keys(self, p: Partition, order_id: str) -> tuple[str, ...]:
        """The reservation and SKU keys of an order this process has seen (else none: the script asks)."""
        known = self._order_of.get(order_id)
        if known is None:
            return ()
        rid, sku = known
        return (p.open_holds(), p.reservation(rid), p.sku(sku), p.holds(sku))

    def _idempotency(
        self, p: Partition, operation: str, scope: str, user: str, key: str | None
    ) -> tuple[tuple[str, ...], tuple[str | int, ...]]:
        """The optional trailing keys and arguments of an idempotent call, or none without a key: the two
        generations of answers the script reads (by this process's clock; the script asks for others when
        Redis's clock is in another generation), and (ttl ms, field)."""
        if key is None:
            return (), ()
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters")
        ttl = self.config.idempotency_ttl_ms
        generation = self.now_ms() // ttl
        return (
            (p.idempotency(generation), p.idempotency(generation - 1)),
            (ttl, idempotency_field(operation, scope, user, key)),
        )

    def load_sale(self, settings: SaleSettings, bucket: int = 0, buckets: int = 1) -> Call[Sale]:
        """Creates or changes a sale; with ``buckets`` > 1, its stock bucket ``bucket`` (engine/buckets)."""
        p = self.keys.for_bucket(identifier(settings.sku, "sku"), bucket)
        pairs = settings.as_pairs()
        if buckets > 1:
            pairs += ["buckets", str(buckets), "bucket", str(bucket)]
        return Call("load_sale", (p.sku(settings.sku), p.events(), p.catalog()), tuple(pairs), _sale)

    def reserve(
        self,
        sku: str,
        user: str,
        quantity: int,
        idempotency_key: str | None,
        rate: RateLimit | None = None,
        bucket: int = 0,
        deposit: tuple[str, int, int, int, int] | None = None,
    ) -> Call[Reservation]:
        """``bucket``: the stock bucket to reserve in; ``deposit``: a transfer into it to deposit first, in
        the same step (transfer id, giving bucket, units, withdrawn at, deadline ms; engine/buckets.py)."""
        p = self.keys.for_bucket(identifier(sku, "sku"), bucket) if bucket else self.keys.for_sku(sku)
        identifier(user, "user id")
        rid = new_reservation_id(p)
        keys: tuple[str, ...] = (
            p.sku(sku),
            p.due(sku),
            p.holds(sku),
            p.events(),
            p.open_holds(),
            p.admitted(sku),
        )
        # A key is scoped to its SKU (reservation, order below), never to the partition a hash happens
        # to put it in: reusing a key for another SKU is a new request.
        answers, idempotency = self._idempotency(p, "reserve", sku, user, idempotency_key)
        args = (user, str(quantity), rid, self._backlog_limit, self.config.lazy_expiry_bound, *idempotency)
        if rate is not None and rate.per_s > 0:
            keys += (p.rate(user),)
            args = (*args, *(() if idempotency else ("", "")), *rate.args())
        if deposit is not None:
            keys += (p.transfers_in(),)
            args = (*args, *("",) * (9 - len(args)), *map(str, deposit))
        return Call(
            "reserve",
            keys + answers,
            args,
            lambda reply: self._reservation(reservation_from_reserve(sku, user, reply)),
        )

    def reserve_many(
        self, sku: str, items: list[tuple[str, int, str]], rate: RateLimit | None = None
    ) -> Call[list[Any]]:
        """Reserves of one SKU in one script call (lua/reserve_many.lua): each item (user, quantity, new
        reservation id; engine/coalescing.py checks them as ``reserve`` does), each held to ``rate`` when
        given; one answer per item."""
        p = self.keys.for_sku(sku)
        args: list[str | int] = [self._backlog_limit, *_rate_args(rate)]
        for user, quantity, rid in items:
            args += (user, str(quantity), rid)
        keys: tuple[str, ...] = (p.sku(sku), p.due(sku), p.holds(sku), p.events(), p.open_holds())
        if rate is not None and rate.per_s > 0:
            keys += tuple(p.rate(user) for user, _, _ in items)
        return Call("reserve_many", keys, tuple(args), _answers)

    def set_waiting_room(self, sku: str, room: WaitingRoom) -> Call[Sale]:
        p = self.keys.for_sku(identifier(sku, "sku"))
        return Call("set_waiting_room", (p.sku(sku), p.events()), room.as_args(), _sale)

    def queue_join(self, sku: str, user: str, rate: RateLimit | None = None) -> Call[QueueStanding]:
        p = self.keys.for_sku(identifier(sku, "sku"))
        identifier(user, "user id")
        return Call(
            "queue_join",
            (*_room_keys(p, sku), p.rate(user)),
            (user, str(self.early_place()), *_rate_args(rate)),
            lambda reply: standing_from_reply(sku, user, reply),
        )

    def queue_status(self, sku: str, user: str, rate: RateLimit | None = None) -> Call[QueueStanding]:
        p = self.keys.for_sku(identifier(sku, "sku"))
        identifier(user, "user id")
        return Call(
            "queue_status",
            (p.sku(sku), p.queue(sku), p.admitted(sku), p.queue_left(sku), p.rate(user)),
            (user, *_rate_args(rate)),
            lambda reply: standing_from_reply(sku, user, reply),
        )

    def queue_admit(self, sku: str, worker_id: str, batch: int) -> Call[AdmitStep]:
        p = self.keys.for_sku(identifier(sku, "sku"))
        return Call(
            "queue_admit",
            (*_room_keys(p, sku), p.events(), p.admitter_lease(sku)),
            (worker_id, str(batch)),
            _admit_step,
        )

    def begin_checkout(
        self, reservation_id: str, user: str, payment_method: str, idempotency_key: str | None
    ) -> Call[Order]:
        p = self.keys.for_reservation(reservation_id)
        identifier(user, "user id")
        order_id = new_order_id(p)
        answers, idempotency = self._idempotency(p, "checkout", reservation_id, user, idempotency_key)
        return Call(
            "begin_checkout",
            (
                p.open_holds(),
                p.reservation(reservation_id),
                p.events(),
                p.order(order_id),
                *self._hold_keys(p, reservation_id),
                *answers,
            ),
            (
                user,
                order_id,
                text(payment_method, "payment method"),
                self.config.payment_grace_ms,
                reservation_id,
                *idempotency,
            ),
            self._order,
        )

    def confirm(
        self, order_id: str, user: str, transaction_id: str, idempotency_key: str | None
    ) -> Call[Order]:
        p = self.keys.for_order(order_id)
        identifier(user, "user id")
        answers, idempotency = self._idempotency(p, "confirm", order_id, user, idempotency_key)
        return Call(
            "confirm",
            (p.order(order_id), p.events(), *self._order_keys(p, order_id), *answers),
            (user, text(transaction_id, "transaction id"), order_id, *idempotency),
            self._order,
        )

    def fail_checkout(self, order_id: str, user: str, reason: str) -> Call[Order]:
        p = self.keys.for_order(order_id)
        identifier(user, "user id")
        return Call(
            "fail_checkout",
            (p.order(order_id), p.events(), *self._order_keys(p, order_id)),
            (user, text(reason, "reason"), order_id),
            self._order,
        )

    def release(self, reservation_id: str, user: str) -> Call[Reservation]:
        p = self.keys.for_reservation(reservation_id)
        identifier(user, "user id")
        return Call(
            "release",
            (p.open_holds(), p.reservation(reservation_id), p.events(), *self._hold_keys(p, reservation_id)),
            (user, reservation_id),
            lambda record: reservation_from_record(reservation_id, record),
        )

    def expire(self, partition: int, limit: int) -> Call[int]:
        if type(partition) is not int or not 0 <= partition < self.config.partitions:
            raise InvalidArgument(f"partition must be 0..{self.config.partitions - 1}")
        p = self.keys.partition(partition)
        return Call("expire", (p.catalog(), p.events(), p.open_holds()), (str(limit),), _count)

    def cancel_order(self, order_id: str, user: str, admin: bool) -> Call[Order]:
        p = self.keys.for_order(order_id)
        identifier(user, "user id")
        return Call(
            "cancel_order",
            (p.order(order_id), p.events(), *self._order_keys(p, order_id)),
            (user, int(admin), order_id),
            self._order,
        )

    def fulfil_order(self, order_id: str) -> Call[Order]:
        p = self.keys.for_order(order_id)
        return Call("fulfil_order", (p.order(order_id), p.events()), (order_id,), self._order)

    def restock(self, sku: str, delta: int) -> Call[Sale]:
        p = self.keys.for_sku(identifier(sku, "sku"))
        return Call("restock", (p.sku(sku), p.events()), (str(delta),), _sale)

    # -- stock buckets (engine/buckets.py) ----------------------------------------------------------------
    def bucket_stock(self, sku: str, bucket: int) -> Call[tuple[int, int, int]]:
        """A bucket's available units, ms until its first hold ends (-1: none), units it gave still moving;
        (-1, -1, 0): no such bucket."""
        p = self.keys.for_bucket(sku, bucket)
        return Call("bucket_stock", (p.sku(sku), p.holds(sku), p.transfers_out(), p.due(sku)), (), _triple)

    def transfer_out(
        self, sku: str, bucket: int, transfer_id: str, to: int, most: int
    ) -> Call[tuple[int, int]]:
        """Withdraws up to ``most`` units from ``bucket`` for bucket ``to``: (units, at ms)."""
        p = self.keys.for_bucket(sku, bucket)
        keys = (p.sku(sku), p.events(), p.transfers_out(), p.holds(sku), p.open_holds(), p.due(sku))
        args = (transfer_id, str(to), str(most), self.config.lazy_expiry_bound)
        return Call("transfer_out", keys, args, _pair)

    def transfer_in(
        self, sku: str, bucket: int, transfer_id: str, source: int, units: int, at: int, deadline_ms: int
    ) -> Call[int]:
        """Deposits a withdrawn transfer into ``bucket``, once; TRANSFER_LATE past ``deadline_ms``."""
        p = self.keys.for_bucket(sku, bucket)
        return Call(
            "transfer_in",
            (p.sku(sku), p.events(), p.transfers_in()),
            (transfer_id, str(source), str(units), str(at), str(deadline_ms)),
            _count,
        )

    def transfer_done(self, hash_key: str, transfer_id: str) -> Call[int]:
        """Drops a transfer from a ledger (the giver's, once deposited) or a receipts hash (when pruned)."""
        return Call("transfer_done", (hash_key,), (transfer_id,), _count)

    def transfer_pending(self, ledger_key: str, transfer_id: str) -> Call[int]:
        """1 while a transfer is in its giver's ledger, else 0."""
        return Call("transfer_pending", (ledger_key,), (transfer_id,), _count)

    def transfers_due(self, hash_key: str, older_than_ms: int) -> Call[list[tuple[str, str]]]:
        """The entries of a ledger or receipts hash older than ``older_than_ms``: [(transfer id, record)]."""
        return Call("transfers_due", (hash_key,), (str(older_than_ms),), _entries)

    def noop(self, sku: str) -> Call[int]:
        p = self.keys.for_sku(sku)
        return Call("noop", (p.sku(sku),), (), _count)
