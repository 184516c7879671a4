"""A hot SKU's stock split into buckets on different partitions, so one SKU is not capped by one Redis core.

A sale created with ``buckets`` = B > 1 keeps bucket b under the SKU's usual key names in partition
``(partition_of(sku) + b) % partitions`` (``Keyspace.for_bucket``): to every script a bucket is a sale of
its own, with its own available/reserved/sold, holds, user counts and stream, so reserve, checkout,
release, expiry and cancel run unchanged on the bucket that holds the reservation (its id carries the
partition). Bucket 0 is the sale's record: its ``total`` is the SKU's total and its changes emit
``sale_loaded``; the others start empty and emit ``bucket_set``. Each bucket's ``moved`` is the units it
received minus those it gave, so in each hash ``total + moved == available + reserved + sold``.

**Routing.** A user's reservations go to their home bucket, ``crc32(user) % B`` (``keys.home_bucket``), so
their held and bought counts live in one hash and the per-user limit stays exact and atomic.

**Transfers.** When the home bucket refuses OUT_OF_STOCK, the engine reads every bucket's stock
(``bucket_stock``) and moves units from the richest ones to the home bucket in three steps, each one
script: ``transfer_out`` on the giver (units leave its available, a ledger entry records where they go,
idempotent by transfer id), ``transfer_in`` on the receiver (deposited once: a receipt), ``transfer_done``
on the giver (the ledger entry goes). Then it reserves on the home bucket again. Between the first and the
second step the units are *moving*: for every SKU at every moment
``sum over buckets of (available + reserved + sold) + moving == total``, where ``moving`` is the ledger
entries without a receipt. A crash between steps leaves a ledger entry; the sweeper (``finish_transfers``)
deposits it (at most once, by the receipt) once it is ``TRANSFER_GRACE_MS`` old, and a caller may deposit
only within ``TRANSFER_DEADLINE_MS`` of the withdrawal, so the two never race. A receipt is forgotten
only after ``RECEIPT_TTL_MS`` and only once its ledger entry is gone, when no deposit can come again.

**Transfers, in detail.** The reserve that moves units deposits the last transfer itself
(``lua/reserve.lua`` with a transfer to deposit), so the moved units are its own to take first. A giver
gives half its units (at least what is needed), or only what is needed once units run short
(``SCARCE_PER_BUCKET`` per bucket): half would strand units where no shopper is left to ask. Concurrent
movers start at different givers (by user and round). A withdrawal first ends the giver's lapsed holds.

**The bound.** A reserve makes at most ``TRANSFER_ROUNDS`` rounds, each reading the buckets and moving
from at most B - 1 givers: at most 5(B - 1) transfers. A shopper hears OUT_OF_STOCK only when, in a
round's read, no other bucket had a unit available or a lapsed hold and none was moving between two
buckets (every bucket was empty during the request; from the second round the home bucket is read again
too), or after those rounds. A refusal costs B script calls (the home bucket's reserve, whose refusal says
what it holds, and a read of each other bucket). A keyed (idempotent) reserve remembers its first answer,
so it makes its transfers first and answers through the script once (a repeat gets its first answer).

The algorithms are written once as plans: generators that yield script calls (a list: calls to run
concurrently) and receive their outcomes (a value, or the FlashSaleError it raised); the sync and asyncio
clients each drive them (``drive``), as they run single calls.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from .bounds import MAX_UNITS
from .errors import FlashSaleError, InvalidArgument, NotFound, OutOfStock, TransferLate
from .keys import Keyspace, home_bucket, new_transfer_id
from .models import Reservation, SaleSettings
from .operations import Call, Operations, RateLimit

T = TypeVar("T")

Step = Call[Any] | list[Call[Any]]
Plan = Generator[Step, Any, T]

# Rounds of reading every bucket and moving units to the home bucket that one reserve may make.
TRANSFER_ROUNDS = 5
# Units per bucket under which a giver gives only what is needed (see reserve).
SCARCE_PER_BUCKET = 4
# A caller deposits a transfer within this long of its withdrawal, else leaves it to the sweeper...
TRANSFER_DEADLINE_MS = 10_000
# ...which finishes transfers older than this (the gap covers clock skew between two Redis servers).
TRANSFER_GRACE_MS = 30_000
# A receipt is kept at least this long, and until its transfer has left the giver's ledger.
RECEIPT_TTL_MS = 3_600_000


def _value(outcome: Any) -> Any:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def load_sale(ops: Operations, settings: SaleSettings, buckets: int) -> Plan[None]:
    """Creates or changes a bucketed sale: bucket 0 first (it holds the total), then the others (settings
    only); a new sale's units are then spread evenly by transfers from bucket 0."""
    before = _value((yield ops.bucket_stock(settings.sku, 0)))
    creating = before[0] < 0
    if not creating and settings.total is not None:
        # A new total is judged on bucket 0 (it holds the total): every available unit goes there
        # first, so that the rule is the SKU's own (never below reserved + sold), not bucket 0's.
        for b in range(1, buckets):
            yield from _move(ops, settings.sku, b, 0, MAX_UNITS)
    _value((yield ops.load_sale(settings, 0, buckets)))
    fields = {f: getattr(settings, f) for f in settings.__struct_fields__}
    # The others take the settings, never units (0 creates a bucket; None leaves its units alone).
    copy = SaleSettings(**{**fields, "total": 0 if creating else None})
    outcomes = yield [ops.load_sale(copy, b, buckets) for b in range(1, buckets)]
    # A bucket a crash left uncreated (NotFound without units): created now.
    missing = [
        b for b, outcome in zip(range(1, buckets), outcomes, strict=True) if isinstance(outcome, NotFound)
    ]
    for outcome in outcomes:
        if not isinstance(outcome, NotFound):
            _value(outcome)
    for outcome in (
        yield [ops.load_sale(SaleSettings(**{**fields, "total": 0}), b, buckets) for b in missing]
    ):
        _value(outcome)
    if creating and settings.total:
        share = settings.total // buckets
        for b in range(1, buckets):
            if share:
                yield from _move(ops, settings.sku, 0, b, share)


Deposit = tuple[str, int, int, int, int]  # transfer id, giving bucket, units, withdrawn at, deadline ms


def _move(
    ops: Operations,
    sku: str,
    giver: int,
    receiver: int,
    most: int,
    deposit_by: Callable[[Deposit], Call[Any]] | None = None,
) -> Plan[tuple[int, Any]]:
    """One transfer of up to ``most`` units from ``giver`` to ``receiver``: the units deposited (0 when the
    giver had none, or when the deposit came too late and is the sweeper's to finish), and the outcome of
    ``deposit_by``'s call, which deposits the transfer itself (a reserve on the receiver that takes the
    units first, in the same step), or None without one (a plain transfer_in)."""
    transfer_id = new_transfer_id(ops.keys.for_bucket(sku, giver))
    units, at = _value((yield ops.transfer_out(sku, giver, transfer_id, receiver, most)))
    if units == 0:
        return 0, None
    deposit = (transfer_id, giver, units, at, TRANSFER_DEADLINE_MS)
    outcome = yield (
        deposit_by(deposit) if deposit_by is not None else ops.transfer_in(sku, receiver, *deposit)
    )
    if isinstance(outcome, TransferLate):
        return 0, None
    if deposit_by is None or isinstance(outcome, (InvalidArgument, NotFound)):
        _value(outcome)  # a deposit refused as malformed or without its bucket: not expected, raised
    _value((yield ops.transfer_done(ops.keys.for_bucket(sku, giver).transfers_out(), transfer_id)))
    return int(units), outcome if deposit_by is not None else None


# reserve.lua's sold-out refusal: units left, then when the first hold ends (api/soldout.py reads it too).
_STOCK_IN_REFUSAL = re.compile(
    r" has (\d+) units left(?:; (?:none is held|the first hold ends in (\d+) ms))?\Z"
)


def _stock_in(refusal: FlashSaleError | None) -> tuple[int, int, int] | None:
    """The home bucket's (available, ms until its first hold ends or -1, 0) from its OUT_OF_STOCK refusal;
    None when there is none to read (a keyed call reads its bucket instead). A refusal without the hold
    part came after the script ended the lapsed holds: no hold of that bucket is lapsed (-1 then)."""
    match = _STOCK_IN_REFUSAL.search(refusal.message) if isinstance(refusal, OutOfStock) else None
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else -1, 0


def _sold_out(sku: str, stocks: list[tuple[int, int, int]]) -> OutOfStock:
    """The refusal after reading every bucket, in reserve.lua's words (api/soldout.py reads them): the
    units left over all buckets and the soonest end of a hold in any."""
    left = sum(max(available, 0) for available, _, _ in stocks)
    ends = [first for _, first, _ in stocks if first >= 0]
    if not ends:
        return OutOfStock(f"sku {sku} has {left} units left; none is held")
    return OutOfStock(f"sku {sku} has {left} units left; the first hold ends in {min(ends)} ms")


def reserve(
    ops: Operations,
    sku: str,
    user: str,
    quantity: int,
    idempotency_key: str | None,
    rate: RateLimit | None,
    buckets: int,
) -> Plan[Reservation]:
    """Reserves on the user's home bucket, moving units there from the others when it is empty."""
    home = home_bucket(user, buckets)
    refusal: FlashSaleError | None = None
    if idempotency_key is None:
        first = yield ops.reserve(sku, user, quantity, None, rate, home)
        if not isinstance(first, OutOfStock):
            return _value(first)  # type: ignore[no-any-return]
        refusal = first

    def reserving(deposit: Deposit | None) -> Call[Reservation]:
        return ops.reserve(sku, user, quantity, idempotency_key, rate, home, deposit)

    others = [b for b in range(buckets) if b != home]
    for round_ in range(TRANSFER_ROUNDS):
        # The home bucket's own refusal says what it has (reserve.lua's words): read only the others.
        known = _stock_in(refusal)
        read = others if known is not None else list(range(buckets))
        replies = [_value(s) for s in (yield [ops.bucket_stock(sku, b) for b in read])]
        stocks = dict(zip(read, replies, strict=True))
        if known is not None:
            stocks[home] = known
        have = stocks[home][0]
        outcome: Any = None
        if have < quantity and stocks[home][1] != 0:  # (a lapsed hold at home: reserve ends it itself)
            # A bucket with a lapsed hold (its first ends in 0 ms) gives its units back as well.
            givers = sorted(
                (b for b in range(buckets) if b != home and (stocks[b][0] > 0 or stocks[b][1] == 0)),
                key=lambda b: -stocks[b][0],
            )
            if not givers:
                last = round_ == TRANSFER_ROUNDS - 1
                if any(stock[2] for stock in stocks.values()) and not last:
                    continue  # none now, but units are on their way between two buckets: read again
                if known is not None and round_ > 0 and not last:
                    # Home was read from a refusal a round ago: others moving units there since may
                    # have filled it. Read it too before calling the SKU sold out.
                    refusal = None
                    continue
                if idempotency_key is None:
                    raise _sold_out(sku, list(stocks.values()))
                # A keyed call answers through the script: a repeat gets its first answer back.
                return _value((yield reserving(None)))  # type: ignore[no-any-return]
            # Concurrent shoppers read the same stocks: each starts at another giver (by its user and
            # round), so they do not all chase the same last units.
            start = zlib.crc32(f"{user}:{round_}".encode()) % len(givers)
            givers = givers[start:] + givers[:start]
            need = quantity - max(have, 0)
            for giver in givers:
                # Half of a giver's units (at least what is needed): a hot home bucket asks less often.
                # Once units run short (a few per bucket left), only what is needed: half would strand
                # units in a bucket whose own shoppers are served while others still look for them.
                left = stocks[giver][0]
                most = max(need, 1) if left <= SCARCE_PER_BUCKET * buckets else max(need, -(-left // 2), 1)
                # The transfer that covers what is still needed (by the read) is deposited by the reserve
                # itself, in the same step, so no other shopper's call takes the moved units first; one
                # that covers less is deposited on its own, and the next giver adds to it.
                covers = min(most, stocks[giver][0]) >= need
                moved, outcome = yield from _move(ops, sku, giver, home, most, reserving if covers else None)
                if outcome is not None:
                    if idempotency_key is not None or not isinstance(outcome, OutOfStock):
                        return _value(outcome)  # type: ignore[no-any-return]
                    # Refused all the same (the giver had fewer units than read, or home's were taken
                    # meanwhile): on to the next giver, for the whole quantity.
                    need, outcome = quantity, None
                    continue
                need -= moved
                if need <= 0:
                    break
        if outcome is None:
            outcome = yield reserving(None)
        if idempotency_key is not None or not isinstance(outcome, OutOfStock):
            return _value(outcome)  # type: ignore[no-any-return]
        refusal = outcome
    assert refusal is not None
    raise refusal


def restock(ops: Operations, sku: str, delta: int, buckets: int) -> Plan[None]:
    """Adds units to bucket 0 (they move on demand); removes available units, gathering them into bucket 0
    from the others first when it has too few."""
    if delta < 0:
        stocks = [_value(s) for s in (yield [ops.bucket_stock(sku, b) for b in range(buckets)])]
        need = -delta - max(stocks[0][0], 0)
        for giver in sorted(range(1, buckets), key=lambda b: -stocks[b][0]):
            if need <= 0 or stocks[giver][0] <= 0:
                break
            need -= (yield from _move(ops, sku, giver, 0, need))[0]
    _value((yield ops.restock(sku, delta)))


def finish_transfers(ops: Operations, partition: int, grace_ms: int = TRANSFER_GRACE_MS) -> Plan[int]:
    """The sweeper's step for one partition: deposits the transfers its bucket gave that are older than
    TRANSFER_GRACE_MS and ends them; forgets receipts older than RECEIPT_TTL_MS whose transfer has left
    its giver's ledger. Returns how many transfers it finished."""
    keys: Keyspace = ops.keys
    p = keys.partition(partition)
    finished = 0
    for transfer_id, record in _value((yield ops.transfers_due(p.transfers_out(), grace_ms))):
        sku, to, units, at = record.split(" ")
        giver = keys.bucket_of(sku, partition)
        _value((yield ops.transfer_in(sku, int(to), transfer_id, giver, int(units), int(at), 0)))
        _value((yield ops.transfer_done(p.transfers_out(), transfer_id)))
        finished += 1
    for transfer_id, record in _value((yield ops.transfers_due(p.transfers_in(), RECEIPT_TTL_MS))):
        sku, giver_bucket, _units, _at = record.split(" ")
        ledger = keys.for_bucket(sku, int(giver_bucket)).transfers_out()
        if _value((yield ops.transfer_pending(ledger, transfer_id))) == 0:
            _value((yield ops.transfer_done(p.transfers_in(), transfer_id)))
    return finished
