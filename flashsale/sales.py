"""Sale files: read, check and load a sale's SKUs (used by ``flashsale sale load`` and ``flashsale up``).

A sale file is JSON (a list of SKUs, or ``{"defaults": {...}, "skus": [...]}``) or CSV (a header row, one
SKU per line) with these fields per SKU:

    sku                      id (letters, digits, -_.@), required
    name                     what shoppers see
    price, flash_price       list price and sale price, in currency units ("129.99"); or
    price_cents, flash_price_cents   the same in integer cents
    stock (or total)         units on sale, required for a new SKU
    per_user_limit           units one user may hold + buy (default 1)
    starts_at, ends_at       ISO 8601 ("2026-11-27T09:00:00Z"), ms since the epoch, or relative to now
                             ("now", "now+10m", "now-1h", "now+2d"); empty = no bound
    reservation_ttl_s        how long a hold lasts, in seconds (or reservation_ttl_ms)
    paused                   true/false
    buckets                  a hot SKU's stock split into this many buckets on different partitions
                             (README, Stock buckets; default 1); set when the SKU is created, fixed after
    waiting_room             a waiting room in front of the sale (README, Waiting room): in JSON an object
                             {"admit_per_s": 50, "opens_at": "now", "stock_factor": 0, "admission_s": 120},
                             or false to turn one off; in CSV the columns waiting_room_admit_per_s,
                             waiting_room_opens_at, waiting_room_stock_factor, waiting_room_admission_s
                             (admit_per_s given: on)

Every SKU is checked before anything is written, against the load_sale script's own bounds and against
what Redis holds (a new SKU needs its stock; stock never below what is reserved or sold; a window whose
other bound is kept must still end after it starts); then each SKU is loaded into Redis with the engine's
``load_sale`` (one script per SKU, which also appends the ``sale_loaded`` event the write-behind worker
turns into the SKU's product and inventory rows in PostgreSQL).
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from flashsale.engine import Engine, bounds
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.models import Sale, SaleSettings, WaitingRoom
from flashsale.engine.nodes import node_clients
from flashsale.engine.operations import identifier

_RELATIVE = re.compile(r"now\s*(?:(?P<sign>[+-])\s*(?P<amount>[0-9]+)\s*(?P<unit>ms|s|m|h|d))?", re.I)
_EPOCH_MS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes "²", which int() then refuses
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_FIELDS = {
    "sku", "name", "price", "price_cents", "flash_price", "flash_price_cents", "stock", "total",
    "per_user_limit", "starts_at", "ends_at", "reservation_ttl_s", "reservation_ttl_ms", "paused",
    "waiting_room", "waiting_room_admit_per_s", "waiting_room_opens_at", "waiting_room_stock_factor",
    "waiting_room_admission_s", "buckets",
}  # fmt: skip
# The load_sale script's bounds (engine/bounds.py, which the script gets as its 'bounds' include), checked
# here as well so that a file is refused whole instead of half loaded.
LIMITS = {
    "price_cents": bounds.MAX_PRICE_CENTS, "flash_price_cents": bounds.MAX_PRICE_CENTS,
    "total": bounds.MAX_UNITS, "per_user_limit": bounds.MAX_PER_USER_LIMIT,
    "starts_at": bounds.MAX_TIME_MS, "ends_at": bounds.MAX_TIME_MS,
    "reservation_ttl_ms": bounds.MAX_RESERVATION_TTL_MS, "paused": 1, "buckets": bounds.MAX_BUCKETS,
}  # fmt: skip
MINIMUM = {"per_user_limit": 1, "reservation_ttl_ms": bounds.MIN_RESERVATION_TTL_MS, "buckets": 1}


class SaleFileError(ValueError):
    """The sale file cannot be loaded; the message names the file, the SKU and the field."""


def read_sale_file(path: Path) -> list[dict[str, Any]]:
    """The SKU records of a JSON or CSV sale file, defaults applied, nothing interpreted yet."""
    try:
        # utf-8-sig: a spreadsheet's CSV export starts with a byte-order mark, which would stick to "sku".
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise SaleFileError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SaleFileError(f"{path} is not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        return _csv_records(path, text)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SaleFileError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    defaults: dict[str, Any] = {}
    if isinstance(document, dict):
        defaults = document.get("defaults") or {}
        document = document.get("skus")
    if not isinstance(document, list) or not all(isinstance(r, dict) for r in document):
        raise SaleFileError(f"{path}: expected a list of SKU objects or {{'skus': [...]}}")
    if not isinstance(defaults, dict):
        raise SaleFileError(f"{path}: 'defaults' must be an object")
    return [_flat_room({**defaults, **record}) for record in document]


def _flat_room(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON record's ``waiting_room`` object as the flat waiting_room_* fields a CSV row has."""
    room = record.get("waiting_room")
    if not isinstance(room, dict):
        return record
    flat = {k: v for k, v in record.items() if k != "waiting_room"}
    for name, value in room.items():
        flat[f"waiting_room_{name}"] = value
    return flat


def _csv_records(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(text.splitlines())
    records = []
    for row in reader:
        if None in row:  # DictReader files surplus values under the key None
            raise SaleFileError(f"{path} line {reader.line_num}: more values than the header has columns")
        records.append({k.strip(): v.strip() for k, v in row.items() if k and v is not None})
    return records


def _cents(value: Any, field: str, maximum: int) -> int:
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise SaleFileError(f"{field} {value!r} is not an amount") from None
    if not amount.is_finite():
        raise SaleFileError(f"{field} {value!r} is not an amount")
    cents = amount * 100
    if cents != cents.to_integral_value() or cents < 0:
        raise SaleFileError(f"{field} {value!r} must be a non-negative amount with at most 2 decimals")
    if cents > maximum:
        raise SaleFileError(f"{field} {value!r} is more than {Decimal(maximum) / 100:.2f}")
    return int(cents)


def _integer(value: Any, field: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise SaleFileError(f"{field} must be an integer, not {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SaleFileError(f"{field} {value!r} is not an integer") from None
    if number < minimum:
        raise SaleFileError(f"{field} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise SaleFileError(f"{field} must be at most {maximum}, not {number}")
    return number


def _instant(value: Any, field: str, now_ms: int) -> int:
    """An instant as ms since the epoch (0 = no bound), relative times measured from ``now_ms``."""
    if value is None or str(value).strip() == "":
        return 0
    text = str(value).strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        offset = int(relative["amount"]) * _UNIT_MS[relative["unit"].lower()] if relative["sign"] else 0
        instant = now_ms - offset if relative["sign"] == "-" else now_ms + offset
    elif _EPOCH_MS.fullmatch(text):
        instant = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise SaleFileError(
                f"{field} {text!r} is not ISO 8601, ms since the epoch or relative like 'now+10m'"
            ) from None
        if moment.tzinfo is None:
            raise SaleFileError(f"{field} {text!r} needs a time zone (e.g. a trailing Z for UTC)")
        instant = int(moment.timestamp() * 1000)
    if not 0 <= instant <= LIMITS[field]:
        raise SaleFileError(f"{field} {text!r} is outside 1970 to the year 5138")
    return instant


def _flag(value: Any, field: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise SaleFileError(f"{field} {value!r} must be true or false")


def sale_settings(record: dict[str, Any], now_ms: int) -> SaleSettings:
    """One SKU record of a sale file as the engine's SaleSettings, checked; raises SaleFileError."""
    sku = str(record.get("sku", "")).strip()
    where = f"sku {sku!r}" if sku else "a SKU without 'sku'"
    try:
        return _settings(record, sku, now_ms)
    except SaleFileError as error:
        raise SaleFileError(f"{where}: {error}") from None


def _settings(record: dict[str, Any], sku: str, now_ms: int) -> SaleSettings:
    unknown = set(record) - _FIELDS
    if unknown:
        raise SaleFileError(f"unknown field(s) {', '.join(sorted(unknown))}")
    nested = sorted(name for name, value in record.items() if isinstance(value, list | dict))
    if nested:
        raise SaleFileError(f"{', '.join(nested)} must be a single value, not a list or an object")
    try:
        identifier(sku, "sku")
    except FlashSaleError as error:
        raise SaleFileError(str(error)) from None

    def given(name: str) -> bool:
        return record.get(name) not in (None, "")

    def either(first: str, second: str) -> str | None:
        """Which of two spellings of one setting the record gives (refusing both), or None."""
        if given(first) and given(second):
            raise SaleFileError(f"give {first} or {second}, not both")
        return first if given(first) else second if given(second) else None

    def count(field: str, setting: str, unit: int = 1) -> int:
        """An integer field within the script's bounds of ``setting``; one of the field's units is
        ``unit`` of the setting's (reservation_ttl_s: 1000 ms)."""
        low, high = -(-MINIMUM.get(setting, 0) // unit), LIMITS[setting] // unit
        return _integer(record[field], field, low, high) * unit

    def money(field: str | None, setting: str) -> int | None:
        if field is None:
            return None
        return count(field, setting) if field == setting else _cents(record[field], field, LIMITS[setting])

    price = either("price", "price_cents")
    flash_price = either("flash_price", "flash_price_cents")
    total = either("stock", "total")
    ttl = either("reservation_ttl_s", "reservation_ttl_ms")
    ttl_unit = 1000 if ttl == "reservation_ttl_s" else 1
    # A bound that is present but empty clears it (0); one that is absent keeps the sale's current bound.
    starts_at = _instant(record["starts_at"], "starts_at", now_ms) if "starts_at" in record else None
    ends_at = _instant(record["ends_at"], "ends_at", now_ms) if "ends_at" in record else None
    if starts_at is not None and ends_at and ends_at <= starts_at:
        raise SaleFileError("ends_at must be after starts_at")
    name = str(record["name"]) if given("name") else None
    if name is not None and not 1 <= len(name.encode()) <= 200:
        raise SaleFileError("name must be 1-200 bytes")
    return SaleSettings(
        sku=sku,
        name=name,
        price_cents=money(price, "price_cents"),
        flash_price_cents=money(flash_price, "flash_price_cents"),
        total=count(total, "total") if total else None,
        per_user_limit=count("per_user_limit", "per_user_limit") if given("per_user_limit") else None,
        starts_at=starts_at,
        ends_at=ends_at,
        reservation_ttl_ms=count(ttl, "reservation_ttl_ms", ttl_unit) if ttl else None,
        paused=_flag(record["paused"], "paused") if given("paused") else None,
    )


def stock_buckets(record: dict[str, Any]) -> int | None:
    """A record's stock bucket count (None: not given, the sale keeps its own), checked."""
    value = record.get("buckets")
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not _EPOCH_MS.fullmatch(text) or not MINIMUM["buckets"] <= int(text) <= LIMITS["buckets"]:
        raise SaleFileError(f"buckets must be an integer from 1 to {LIMITS['buckets']}")
    return int(text)


def waiting_room(record: dict[str, Any], now_ms: int) -> WaitingRoom | None:
    """A record's waiting room (None: the record says nothing of one), checked; raises SaleFileError."""
    sku = str(record.get("sku", "")).strip()
    try:
        rate = record.get("waiting_room_admit_per_s")
        if rate in (None, ""):
            if record.get("waiting_room") in (None, ""):
                return None
            if _flag(record["waiting_room"], "waiting_room"):
                raise SaleFileError("waiting_room needs admit_per_s (shoppers let in each second)")
            return WaitingRoom(on=False, admit_per_s=1, admission_ttl_ms=bounds.MIN_ADMISSION_TTL_MS)
        opens = record.get("waiting_room_opens_at")
        ttl_s = record.get("waiting_room_admission_s")
        return WaitingRoom(
            on=True,
            admit_per_s=_integer(rate, "waiting_room.admit_per_s", 1, bounds.MAX_ADMIT_PER_S),
            opens_at=0 if opens in (None, "") else _instant(opens, "starts_at", now_ms),
            stock_factor=_integer(
                record.get("waiting_room_stock_factor") or 0,
                "waiting_room.stock_factor",
                0,
                bounds.MAX_STOCK_FACTOR,
            ),
            admission_ttl_ms=1000
            * _integer(
                120 if ttl_s in (None, "") else ttl_s,
                "waiting_room.admission_s",
                bounds.MIN_ADMISSION_TTL_MS // 1000,
                bounds.MAX_ADMISSION_TTL_MS // 1000,
            ),
        )
    except SaleFileError as error:
        raise SaleFileError(f"sku {sku!r}: {error}") from None


def iso_utc(ms: int) -> str:
    """An instant in ms since the epoch as ISO 8601 UTC ("2026-11-27T09:00:00Z")."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


def redis_now_ms(engine: Engine) -> int:
    """Redis's clock, the one every deadline is measured on (relative times in a sale file use it): on a
    cluster, that of the first master that answers."""
    if not isinstance(engine.redis, redis.cluster.RedisCluster):
        seconds, micros = engine.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
    errors: list[redis.RedisError] = []
    for _name, client in sorted(node_clients(engine.redis).items()):
        try:
            seconds, micros = client.time()
        except redis.RedisError as error:
            errors.append(error)
            continue
        return int(seconds) * 1000 + int(micros) // 1000
    raise errors[-1] if errors else redis.ConnectionError("no Redis node to ask the time")


def check_against_live(engine: Engine, sales: list[SaleSettings]) -> None:
    """Refuses, before anything is written, what the load_sale script would refuse half way through."""
    seen: set[str] = set()
    for settings in sales:
        if settings.sku in seen:
            raise SaleFileError(f"sku {settings.sku!r} appears twice")
        seen.add(settings.sku)
        try:
            current: Sale | None = engine.get_sale(settings.sku)
        except FlashSaleError:
            current = None
        if current is None:
            if settings.total is None:
                raise SaleFileError(f"sku {settings.sku!r} is new: give its stock")
            continue
        committed = current.reserved + current.sold
        if settings.total is not None and settings.total < committed:
            raise SaleFileError(
                f"sku {settings.sku!r}: stock {settings.total} is below the {committed} units "
                "already reserved or sold"
            )
        # One bound given, the other kept: the pair must still make a window.
        starts_at = current.starts_at if settings.starts_at is None else settings.starts_at
        ends_at = current.ends_at if settings.ends_at is None else settings.ends_at
        if ends_at and ends_at <= starts_at:
            kept, at = ("starts_at", starts_at) if settings.starts_at is None else ("ends_at", ends_at)
            raise SaleFileError(
                f"sku {settings.sku!r}: ends_at must be after starts_at (its {kept} stays {iso_utc(at)})"
            )


def load_sales(engine: Engine, records: list[dict[str, Any]]) -> list[Sale]:
    """Checks every record, then loads each SKU into Redis (whose events carry it to PostgreSQL)."""
    now_ms = redis_now_ms(engine)
    sales = [sale_settings(record, now_ms) for record in records]
    if not sales:
        raise SaleFileError("the sale file has no SKUs")
    rooms = [waiting_room(record, now_ms) for record in records]
    for record in records:
        stock_buckets(record)
    check_against_live(engine, sales)
    for settings, room in zip(sales, rooms, strict=True):
        starts_at = settings.starts_at
        if starts_at is None:
            try:
                starts_at = engine.get_sale(settings.sku).starts_at
            except FlashSaleError:
                starts_at = 0
        if room is not None and room.on and room.opens_at and starts_at and room.opens_at >= starts_at:
            raise SaleFileError(f"sku {settings.sku!r}: the waiting room must open before the sale starts")
    loaded = [
        engine.load_sale(settings, buckets=stock_buckets(record))
        for settings, record in zip(sales, records, strict=True)
    ]
    return [
        sale if room is None else engine.set_waiting_room(sale.sku, room)
        for sale, room in zip(loaded, rooms, strict=True)
    ]
