"""The key layout: the only code that knows Redis key names.

Every key of a SKU, of its reservations and orders, and of its partition's event stream carries the
hash tag ``{p<N>}`` of the SKU's partition, so one script's keys always live in one Redis Cluster slot.

    fs:{p3}:sku:<sku>          hash    counters (total available reserved sold), sale settings, and per
                                       user h:<user> (units held now), b:<user> (units bought): the limit
    fs:{p3}:skus               set     the partition's SKU ids (the catalog)
    fs:{p3}:holds:<sku>        zset    the SKU's open holds: reservation id -> deadline ms (expiry)
    fs:{p3}:r:<reservation id> string  one reservation: "sku user quantity status created_at expires_at
                                       order_id pay_until ended_at" (lua/includes/reservations.lua)
    fs:{p3}:order:<order id>   hash    one order
    fs:{p3}:idem:<generation>  hash    first answers of idempotent calls, field "<op>:<scope>:<user>:<key>",
                                       generation = now // idempotency ttl (lua/includes/idempotency.lua)
    fs:{p3}:events             stream  every state change of the partition, in order (engine/events.py)
    fs:{p3}:stock              channel (pub/sub, not a key) a SKU id, published by a script that may have
                                       made a sold-out SKU reservable again (lua/includes/stock.lua)
    fs:{p3}:writeback:lease    string  the write-behind worker holding the partition (a lease)
    fs:{p3}:writeback          hash    applied (PostgreSQL), published (Kafka): stream ids each sink took
    fs:writeback:workers       zset    worker id -> last heartbeat ms: the live workers
    fs:writeback:worker:<id>   string  the partitions a worker holds, expiring with the worker

Reservation and order ids carry their partition (``rsv_3_…``, ``ord_3_…``), so a lookup by id needs no index.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field

from .errors import NotFound
from .settings import KEY_PREFIX, PARTITIONS

# A reservation or order id: kind, partition, random part; ASCII only (re.ASCII: \d is [0-9] alone).
ENTITY_ID = re.compile(r"(rsv|ord)_(0|[1-9]\d{0,4})_([0-9a-zA-Z]{1,64})", re.ASCII)


def partition_of(sku: str, partitions: int) -> int:
    """The SKU's partition: a stable hash, the same in every process and every release."""
    return zlib.crc32(sku.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Partition:
    """Key names of one partition."""

    index: int
    prefix: str
    # The prefix every key of this partition starts with, hash tag included: ``fs:{p3}:``.
    tag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", f"{self.prefix}:{{p{self.index}}}:")

    def sku(self, sku: str) -> str:
        return f"{self.tag}sku:{sku}"

    def catalog(self) -> str:
        return f"{self.tag}skus"

    def holds(self, sku: str) -> str:
        return f"{self.tag}holds:{sku}"

    def reservation(self, reservation_id: str) -> str:
        return f"{self.tag}r:{reservation_id}"

    def order(self, order_id: str) -> str:
        return f"{self.tag}order:{order_id}"

    def idempotency(self, generation: int) -> str:
        """One generation's hash of idempotent answers (the scripts pick the generation by the clock)."""
        return f"{self.tag}idem:{generation}"

    def events(self) -> str:
        return f"{self.tag}events"

    def stock_channel(self) -> str:
        """The pub/sub channel on which this partition's scripts announce stock coming back (a SKU id per
        message); every API process listens to drop its "sold out" flags (api/soldout.py)."""
        return f"{self.tag}stock"

    def writeback_lease(self) -> str:
        return f"{self.tag}writeback:lease"

    def writeback_progress(self) -> str:
        return f"{self.tag}writeback"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Maps SKUs and entity ids to their partition's keys (Partition objects made once, not per call)."""

    partitions: int = PARTITIONS
    prefix: str = KEY_PREFIX
    _all: tuple[Partition, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_all", tuple(Partition(i, self.prefix) for i in range(self.partitions)))

    def partition(self, index: int) -> Partition:
        return self._all[index]

    def for_sku(self, sku: str) -> Partition:
        return self._all[zlib.crc32(sku.encode()) % self.partitions]

    def for_id(self, entity_id: str) -> Partition | None:
        """The partition an id was minted in, or None when the id is not one of ours (one strict ASCII
        rule, ``ENTITY_ID``: ``str.isdigit`` would take "²" as a digit that ``int`` then refuses)."""
        match = ENTITY_ID.fullmatch(entity_id) if isinstance(entity_id, str) else None
        if match is None:
            return None
        index = int(match.group(2))
        if index >= self.partitions:
            return None
        return self._all[index]

    def for_reservation(self, reservation_id: str) -> Partition:
        """The partition a reservation id was minted in; NotFound for an id that is not one of ours."""
        p = self.for_id(reservation_id)
        if p is None or not reservation_id.startswith("rsv_"):
            raise NotFound(f"no reservation {reservation_id!r}")
        return p

    def for_order(self, order_id: str) -> Partition:
        """The partition an order id was minted in; NotFound for an id that is not one of ours."""
        p = self.for_id(order_id)
        if p is None or not order_id.startswith("ord_"):
            raise NotFound(f"no order {order_id!r}")
        return p

    def writeback_workers(self) -> str:
        return f"{self.prefix}:writeback:workers"

    def writeback_worker(self, worker_id: str) -> str:
        return f"{self.prefix}:writeback:worker:{worker_id}"

    def all(self) -> list[Partition]:
        return list(self._all)


def held_field(user: str) -> str:
    """The SKU hash's field of the units ``user`` holds right now."""
    return f"h:{user}"


def bought_field(user: str) -> str:
    """The SKU hash's field of the units ``user`` has bought."""
    return f"b:{user}"


def idempotency_field(operation: str, scope: str, user: str, key: str) -> str:
    """A first answer's field: scoped to the user and to what the call is about (SKU, reservation, order)."""
    return f"{operation}:{scope}:{user}:{key}"


def new_reservation_id(partition: Partition) -> str:
    # 96 random bits as 24 hex digits: unique for good (PostgreSQL keeps every id), short in memory.
    return f"rsv_{partition.index}_{os.urandom(12).hex()}"


def new_order_id(partition: Partition) -> str:
    return f"ord_{partition.index}_{os.urandom(12).hex()}"
