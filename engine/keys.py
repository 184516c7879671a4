"""The key layout: the only code that knows Redis key names.

Every key of a SKU, of its reservations and orders, and of its partition's event stream carries the
hash tag ``{p<N>}`` of the SKU's partition, so one script's keys always live in one Redis Cluster slot.

    fs:{p3}:sku:<sku>          hash    counters (total available reserved sold), sale settings, and per
                                       user h:<user> (units held now), b:<user> (units bought): the limit;
                                       due_last: a deadline at or after the due list's last; due_first: one
                                       at or before every open hold's (reserve.lua)
    fs:{p3}:skus               set     the partition's SKU ids (the catalog)
    fs:{p3}:due:<sku>          list    the SKU's holds by deadline, as they were made: "<deadline ms>
                                       <reservation id>" (an ended hold's entry stays until the head is there)
    fs:{p3}:holds:<sku>        zset    the SKU's holds out of the list's order: reservation id -> deadline ms
                                       (a checkout's payment grace, ...) (lua/includes/holds.lua: expiry)
    fs:{p3}:open               hash    the open reservations: reservation id -> its record "sku user quantity
                                       created_at expires_at order_id pay_until"
    fs:{p3}:r:<reservation id> string  an ended reservation's record, kept for the retention period: "sku user
                                       quantity status created_at expires_at order_id pay_until ended_at"
                                       (lua/includes/reservations.lua)
    fs:{p3}:order:<order id>   hash    one order
    fs:{p3}:idem:<generation>  hash    first answers of idempotent calls, field "<op>:<digest of scope, user
                                       and key>"; generation = now // idempotency ttl (idempotency.lua)
    fs:{p3}:events             stream  every state change of the partition, in order (engine/events.py)
    fs:{p3}:gw:<order id>      hash    the simulated payment gateway's record of one order's payment
                                       (status, amount, method, transaction, review) (writeback/payments.py)
    fs:{p3}:gw:unsettled       zset    order id -> ms since its payment is not final: the settlement's list
    fs:{p3}:gw:counts          hash    the gateway's authorizations, declines, captures, voids, refunds
    fs:{p3}:settlement         hash    payments the settlement pass captured, voided, refunded (counts)
    fs:{p3}:wr:<sku>           hash    a SKU's waiting room: the late joiners' counter, the admitter's token
                                       bucket, counts (joined, admitted, lapsed, sent away), time in queue
    fs:{p3}:wr:q:<sku>         zset    the line: user -> place (random below 2^48 for those who joined
                                       before the sale started, 2^48 + a counter after)
    fs:{p3}:wr:a:<sku>         zset    admitted shoppers: user -> admission deadline ms (negated once a
                                       reservation used it)
    fs:{p3}:wr:t:<sku>         hash    user -> ms they joined, while in line (time in queue)
    fs:{p3}:wr:left:<sku>      zset    shoppers who left the line without buying: user -> 0 sent away sold
                                       out, 1 admission lapsed unused
    fs:{p3}:wr:lease:<sku>     string  the worker admitting shoppers to this SKU's sale (a lease)
    fs:{p3}:rl:<user>          string  the user's request-rate bucket in this partition (GCRA: the next
                                       allowed moment), expiring when the bucket is full again
    fs:{p3}:moves:out          hash    stock-bucket transfers this partition's bucket gave and the receiver
                                       has not yet confirmed: id -> "sku to_bucket units at" (the ledger)
    fs:{p3}:moves:in           hash    transfers this partition's bucket received: id -> "sku from_bucket
                                       units at" (receipts: a transfer is deposited once) (engine/buckets.py)
    fs:{p3}:stock              channel (pub/sub, not a key) a SKU id, published by a script that may have
                                       made a sold-out SKU reservable again (lua/includes/stock.lua)
    fs:{p3}:writeback:lease    string  the write-behind worker holding the partition (a lease)
    fs:{p3}:writeback          hash    applied (PostgreSQL), published (Kafka): stream ids each sink took
    fs:writeback:workers       zset    worker id -> last heartbeat ms: the live workers
    fs:writeback:worker:<id>   string  the partitions a worker holds, expiring with the worker
    fs:{layout}                hash    partitions: the partition count this keyspace was laid out with,
                                       written by the first process, checked by every later one

A SKU split into stock buckets (engine/buckets.py) keeps bucket b under the same key names in partition
``(partition_of(sku) + b) % partitions``: each bucket is a sale of its own to every script.

Reservation and order ids carry their partition (``rsv_3_…``, ``ord_3_…``), so a lookup by id needs no index.

The partition count is fixed for the life of a keyspace: a SKU's partition is ``crc32(sku) % partitions``,
so another count would look for every SKU, reservation and order under another hash tag and find nothing
(its stream, its worker lease, its ids' partitions all change). ``check_layout`` refuses a process whose
count differs from the recorded one; changing it means draining the write-behind backlog, emptying Redis
and loading the sales again from PostgreSQL (``flashsale reconcile --repair redis-from-postgres``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field

from .errors import NotFound
from .settings import KEY_PREFIX, PARTITIONS

# A reservation or order id: kind, partition, random part; ASCII only (re.ASCII: \d is [0-9] alone).
ENTITY_ID = re.compile(r"(rsv|ord)_(0|[1-9]\d{0,4})_([0-9a-zA-Z_-]{1,64})", re.ASCII)


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
        """The SKU's holds out of ``due``'s order, by deadline (lua/includes/holds.lua)."""
        return f"{self.tag}holds:{sku}"

    def due(self, sku: str) -> str:
        """The SKU's holds in the order they were made, each "<deadline ms> <reservation id>"."""
        return f"{self.tag}due:{sku}"

    def open_holds(self) -> str:
        """The hash of the partition's open reservations (field: the id, value: its record)."""
        return f"{self.tag}open"

    def reservation(self, reservation_id: str) -> str:
        """An ended reservation's record (an open one is a field of ``open_holds``)."""
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

    def transfers_out(self) -> str:
        """The ledger of stock-bucket transfers this partition gave and has not yet seen deposited."""
        return f"{self.tag}moves:out"

    def transfers_in(self) -> str:
        """The receipts of stock-bucket transfers this partition received (each deposited once)."""
        return f"{self.tag}moves:in"

    def writeback_lease(self) -> str:
        return f"{self.tag}writeback:lease"

    # -- a SKU's waiting room (lua/includes/waiting_room.lua) ---------------------------------------------
    def waiting_room(self, sku: str) -> str:
        return f"{self.tag}wr:{sku}"

    def queue(self, sku: str) -> str:
        """The line: user -> place."""
        return f"{self.tag}wr:q:{sku}"

    def admitted(self, sku: str) -> str:
        """Admitted shoppers: user -> admission deadline ms (negated once used by a reservation)."""
        return f"{self.tag}wr:a:{sku}"

    def queue_joined(self, sku: str) -> str:
        """When each shopper in line joined (time in queue)."""
        return f"{self.tag}wr:t:{sku}"

    def queue_left(self, sku: str) -> str:
        """Shoppers who left the line without buying, and why."""
        return f"{self.tag}wr:left:{sku}"

    def admitter_lease(self, sku: str) -> str:
        """The worker admitting shoppers to this SKU's sale."""
        return f"{self.tag}wr:lease:{sku}"

    def rate(self, user: str) -> str:
        """The user's request-rate bucket in this partition (lua/includes/ratelimit.lua)."""
        return f"{self.tag}rl:{user}"

    def payment(self, order_id: str) -> str:
        """The simulated payment gateway's record of one order's payment (the order's partition)."""
        return f"{self.tag}gw:{order_id}"

    def payments_unsettled(self) -> str:
        """The gateway's list of payments that are not final: order id -> ms since when."""
        return f"{self.tag}gw:unsettled"

    def payment_counts(self) -> str:
        """The gateway's counts of authorizations, declines, captures, voids and refunds."""
        return f"{self.tag}gw:counts"

    def settlements(self) -> str:
        """Counts of what the settlement pass did (capture, void, refund)."""
        return f"{self.tag}settlement"

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

    def for_bucket(self, sku: str, bucket: int) -> Partition:
        """The partition of a SKU's stock bucket ``bucket`` (0: the SKU's own partition)."""
        return self._all[(zlib.crc32(sku.encode()) + bucket) % self.partitions]

    def bucket_of(self, sku: str, partition: int) -> int:
        """Which stock bucket of ``sku`` lives in ``partition`` (0 for a SKU without buckets)."""
        return (partition - zlib.crc32(sku.encode())) % self.partitions

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

    def layout(self) -> str:
        """The hash recording the partition count (its own hash tag: it belongs to no partition)."""
        return f"{self.prefix}:{{layout}}"


class PartitionCountMismatch(RuntimeError):
    """This process is configured with another partition count than the one Redis's keys were laid out
    with (``fs:{layout}``): it would not find a single SKU."""


def check_layout(recorded: object, partitions: int, key: str) -> None:
    """Refuses to go on when ``recorded`` (what ``key`` holds after HSETNX) is not ``partitions``."""
    if recorded is None or int(str(recorded)) == partitions:
        return
    raise PartitionCountMismatch(
        f"Redis holds a keyspace laid out in {recorded} partitions ({key}), this process is configured "
        f"with {partitions} (FLASHSALE_PARTITIONS): every SKU would map to another partition. Set "
        f"FLASHSALE_PARTITIONS={recorded}, or move to {partitions} partitions by draining the write-behind "
        "backlog, emptying Redis and reloading it from PostgreSQL (README, Redis Cluster)."
    )


def held_field(user: str) -> str:
    """The SKU hash's field of the units ``user`` holds right now."""
    return f"h:{user}"


def bought_field(user: str) -> str:
    """The SKU hash's field of the units ``user`` has bought."""
    return f"b:{user}"


def idempotency_field(operation: str, scope: str, user: str, key: str) -> str:
    """A first answer's field: scoped to the user and to what the call is about (SKU, reservation, order).
    The three are digested (120 bits) so that every answer's field is as short, whatever the key."""
    digest = hashlib.blake2b(f"{scope}\0{user}\0{key}".encode(), digest_size=15).digest()
    return f"{operation}:{base64.urlsafe_b64encode(digest).decode()}"


def _random_part() -> str:
    # 96 random bits as 16 URL-safe base64 characters: unique for good (PostgreSQL keeps every id), and
    # short, since a hold's id is stored three times (its record's field, its holds entry, its event; the
    # reserved event carries these 16 characters alone: engine/events.py relies on the length).
    return base64.urlsafe_b64encode(os.urandom(12)).decode()


def new_reservation_id(partition: Partition) -> str:
    return f"rsv_{partition.index}_{_random_part()}"


def new_transfer_id(partition: Partition) -> str:
    """A stock-bucket transfer's id, minted in the giving bucket's partition."""
    return f"mv_{partition.index}_{_random_part()}"


def home_bucket(user: str, buckets: int) -> int:
    """The stock bucket a user's reservations of a bucketed SKU go to: always the same one, so that the
    user's held and bought counts live in one hash and the per-user limit stays exact."""
    return zlib.crc32(user.encode()) % buckets if buckets > 1 else 0


def new_order_id(partition: Partition) -> str:
    return f"ord_{partition.index}_{_random_part()}"
