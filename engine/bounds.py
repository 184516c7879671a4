"""Every bound on a value the engine accepts, and how long Redis keeps what ended, in one place.

A value a script accepts travels on to every sink: Redis (Lua numbers are doubles, exact up to 2**53),
PostgreSQL (``integer`` columns hold up to 2**31 - 1, ``bigint`` 2**63 - 1), Kafka's JSON bodies and the
API's msgspec schemas. The scripts get these numbers as the generated include ``bounds`` (see
``engine.scripts``), the API's request types use them (``api.schemas``), and a test checks each one against
the PostgreSQL column it lands in, so a value can never pass the hot path and then stall the worker.
"""

from __future__ import annotations

from typing import Final

# Units of one SKU: total, available, reserved, sold (PostgreSQL integer columns).
MAX_UNITS: Final = 1_000_000_000
# Units one user may hold and buy of one SKU; also the largest quantity of one reservation.
MAX_PER_USER_LIMIT: Final = 1_000_000
# A unit price in cents (PostgreSQL bigint). Price × quantity must stay exact in Lua's doubles (2**53).
MAX_PRICE_CENTS: Final = 1_000_000_000
# Times in ms since the epoch (year 5138), and how long a hold may last (~115 days).
MAX_TIME_MS: Final = 100_000_000_000_000
MIN_RESERVATION_TTL_MS: Final = 1_000
MAX_RESERVATION_TTL_MS: Final = 10_000_000_000
# Free text.
MAX_NAME_BYTES: Final = 200
MAX_PAYMENT_METHOD_BYTES: Final = 64
MAX_TRANSACTION_ID_BYTES: Final = 128
MAX_REASON_BYTES: Final = 200
MAX_IDEMPOTENCY_KEY_CHARS: Final = 200
# Identifiers (SKU, user): the characters allowed in Redis key names and ids.
IDENTIFIER_PATTERN: Final = r"[A-Za-z0-9\-_.@]{1,128}"
MAX_IDENTIFIER_CHARS: Final = 128
# Stock buckets of one SKU (engine/buckets.py): each on its own partition, so at most the partition count.
MAX_BUCKETS: Final = 64
# The sweeper's step.
MAX_SWEEP_BATCH: Final = 10_000
# A waiting room (lua/set_waiting_room.lua): shoppers admitted per second, the stock rule's factor (at
# most factor x units available admitted and not yet reserving; 0 = no such rule), how long an admission
# lasts, and the most shoppers one admitter step lets in.
MAX_ADMIT_PER_S: Final = 50_000
MAX_STOCK_FACTOR: Final = 1_000
MIN_ADMISSION_TTL_MS: Final = 1_000
MAX_ADMISSION_TTL_MS: Final = 86_400_000
MAX_ADMIT_BATCH: Final = 5_000
# Places in a waiting-room line: a shopper who joins before the sale starts gets a random place below
# LATE_PLACES; one who joins later LATE_PLACES + a counter, so every early joiner is ahead of every late one.
LATE_PLACES: Final = 2**48
# Time in a waiting room's line until admission, counted per bucket (upper bounds in seconds; a last,
# unbounded bucket follows): the admitter writes the counts, /metrics exposes them as a histogram.
QUEUE_WAIT_BUCKETS_S: Final = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Ended reservations and orders stay readable in Redis this long; PostgreSQL keeps them for good.
RETENTION_MS: Final = 7 * 24 * 3600 * 1000

LUA_EXACT_INTEGER: Final = 2**53
POSTGRES_INTEGER: Final = 2**31 - 1
POSTGRES_BIGINT: Final = 2**63 - 1

assert MAX_PRICE_CENTS * MAX_PER_USER_LIMIT < LUA_EXACT_INTEGER, "an order total must be exact in Lua"
assert MAX_TIME_MS + MAX_RESERVATION_TTL_MS < LUA_EXACT_INTEGER
assert MAX_TIME_MS + MAX_ADMISSION_TTL_MS < LUA_EXACT_INTEGER
assert 2 * LATE_PLACES < LUA_EXACT_INTEGER, "late places (2^48 + a counter) must be exact in Lua"


def as_lua() -> str:
    """The bounds as Lua locals: the body of the generated include ``bounds``."""
    names = [
        "MAX_UNITS",
        "MAX_PER_USER_LIMIT",
        "MAX_PRICE_CENTS",
        "MAX_TIME_MS",
        "MIN_RESERVATION_TTL_MS",
        "MAX_RESERVATION_TTL_MS",
        "MAX_NAME_BYTES",
        "MAX_PAYMENT_METHOD_BYTES",
        "MAX_TRANSACTION_ID_BYTES",
        "MAX_REASON_BYTES",
        "MAX_IDENTIFIER_CHARS",
        "MAX_SWEEP_BATCH",
        "MAX_BUCKETS",
        "RETENTION_MS",
        "MAX_ADMIT_PER_S",
        "MAX_STOCK_FACTOR",
        "MIN_ADMISSION_TTL_MS",
        "MAX_ADMISSION_TTL_MS",
        "MAX_ADMIT_BATCH",
        "LATE_PLACES",
    ]
    lines = ["-- Generated from engine/bounds.py by the script loader: every bound a script checks."]
    lines += [f"local {name} = {globals()[name]}" for name in names]
    return "\n".join(lines) + "\n"


def queue_wait_buckets_lua() -> str:
    """The body of the generated include ``queue_wait_buckets`` (lua/queue_admit.lua): a table, kept out of
    ``bounds``, which every script includes, because Redis runs a script's whole body on every call and
    builds its tables anew each time (~0.4 µs for this one, timed in a Lua loop on Redis 6.2)."""
    buckets = ", ".join(map(str, QUEUE_WAIT_BUCKETS_S))
    header = "-- Generated from engine/bounds.py by the script loader."
    return f"{header}\nlocal QUEUE_WAIT_BUCKETS_S = {{{buckets}}}\n"
