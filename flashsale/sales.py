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

Every SKU is checked before anything is written; then each SKU is loaded into Redis with the engine's
``load_sale`` (one script per SKU, which also appends the ``sale_loaded`` event the write-behind worker
turns into the SKU's product and inventory rows in PostgreSQL).
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from flashsale.engine import Engine
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.models import Sale, SaleSettings
from flashsale.engine.operations import identifier

_RELATIVE = re.compile(r"now\s*(?:(?P<sign>[+-])\s*(?P<amount>\d+)\s*(?P<unit>ms|s|m|h|d))?", re.I)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_FIELDS = {
    "sku", "name", "price", "price_cents", "flash_price", "flash_price_cents", "stock", "total",
    "per_user_limit", "starts_at", "ends_at", "reservation_ttl_s", "reservation_ttl_ms", "paused",
}  # fmt: skip


class SaleFileError(ValueError):
    """The sale file cannot be loaded; the message names the file, the SKU and the field."""


def read_sale_file(path: Path) -> list[dict[str, Any]]:
    """The SKU records of a JSON or CSV sale file, defaults applied, nothing interpreted yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SaleFileError(f"cannot read {path}: {error.strerror}") from None
    if path.suffix.lower() == ".csv":
        rows = [dict(row) for row in csv.DictReader(text.splitlines())]
        return [{k.strip(): v.strip() for k, v in row.items() if k and v is not None} for row in rows]
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
    return [{**defaults, **record} for record in document]


def _cents(value: Any, field: str) -> int:
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise SaleFileError(f"{field} {value!r} is not an amount") from None
    cents = amount * 100
    if cents != cents.to_integral_value() or cents < 0:
        raise SaleFileError(f"{field} {value!r} must be a non-negative amount with at most 2 decimals")
    return int(cents)


def _integer(value: Any, field: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise SaleFileError(f"{field} must be an integer, not {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SaleFileError(f"{field} {value!r} is not an integer") from None
    if number < minimum:
        raise SaleFileError(f"{field} must be at least {minimum}, not {number}")
    return number


def _instant(value: Any, field: str, now_ms: int) -> int:
    """An instant as ms since the epoch (0 = no bound), relative times measured from ``now_ms``."""
    if value is None or str(value).strip() == "":
        return 0
    text = str(value).strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        if not relative["sign"]:
            return now_ms
        offset = int(relative["amount"]) * _UNIT_MS[relative["unit"].lower()]
        return now_ms + offset if relative["sign"] == "+" else now_ms - offset
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SaleFileError(
            f"{field} {text!r} is not ISO 8601, ms since the epoch or relative like 'now+10m'"
        ) from None
    if moment.tzinfo is None:
        raise SaleFileError(f"{field} {text!r} needs a time zone (e.g. a trailing Z for UTC)")
    return int(moment.timestamp() * 1000)


def _flag(value: Any, field: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise SaleFileError(f"{field} {value!r} must be true or false")


def sale_settings(record: dict[str, Any], now_ms: int) -> SaleSettings:
    """One SKU record of a sale file as the engine's SaleSettings, checked; raises SaleFileError."""
    unknown = set(record) - _FIELDS
    sku = str(record.get("sku", "")).strip()
    where = f"sku {sku!r}" if sku else "a SKU without 'sku'"
    try:
        if unknown:
            raise SaleFileError(f"unknown field(s) {', '.join(sorted(unknown))}")
        try:
            identifier(sku, "sku")
        except FlashSaleError as error:
            raise SaleFileError(str(error)) from None

        for pair in (("price", "price_cents"), ("flash_price", "flash_price_cents"), ("stock", "total"),
                     ("reservation_ttl_s", "reservation_ttl_ms")):  # fmt: skip
            if all(record.get(name) not in (None, "") for name in pair):
                raise SaleFileError(f"give {pair[0]} or {pair[1]}, not both")

        def pick(*names: str) -> Any:
            for name in names:
                if record.get(name) not in (None, ""):
                    return record[name]
            return None

        price = pick("price_cents")
        price_cents = _integer(price, "price_cents") if price is not None else None
        if price_cents is None and pick("price") is not None:
            price_cents = _cents(pick("price"), "price")
        flash = pick("flash_price_cents")
        flash_cents = _integer(flash, "flash_price_cents") if flash is not None else None
        if flash_cents is None and pick("flash_price") is not None:
            flash_cents = _cents(pick("flash_price"), "flash_price")
        total = pick("stock", "total")
        limit = pick("per_user_limit")
        ttl_ms = pick("reservation_ttl_ms")
        ttl_s = pick("reservation_ttl_s")
        starts_at = _instant(record.get("starts_at"), "starts_at", now_ms) if "starts_at" in record else None
        ends_at = _instant(record.get("ends_at"), "ends_at", now_ms) if "ends_at" in record else None
        if starts_at is not None and ends_at and ends_at <= starts_at:
            raise SaleFileError("ends_at must be after starts_at")
        name = pick("name")
        if name is not None and not 1 <= len(str(name).encode()) <= 200:
            raise SaleFileError("name must be 1-200 bytes")
        return SaleSettings(
            sku=sku,
            name=str(name) if name is not None else None,
            price_cents=price_cents,
            flash_price_cents=flash_cents,
            total=_integer(total, "stock") if total is not None else None,
            per_user_limit=_integer(limit, "per_user_limit", 1) if limit is not None else None,
            starts_at=starts_at,
            ends_at=ends_at,
            reservation_ttl_ms=(
                _integer(ttl_ms, "reservation_ttl_ms", 1000)
                if ttl_ms is not None
                else _integer(ttl_s, "reservation_ttl_s", 1) * 1000
                if ttl_s is not None
                else None
            ),
            paused=_flag(record["paused"], "paused") if record.get("paused") not in (None, "") else None,
        )
    except SaleFileError as error:
        raise SaleFileError(f"{where}: {error}") from None


def redis_now_ms(engine: Engine) -> int:
    """Redis's clock, the one every deadline is measured on (relative times in a sale file use it)."""
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


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
        if current is None and settings.total is None:
            raise SaleFileError(f"sku {settings.sku!r} is new: give its stock")
        if current is not None and settings.total is not None:
            committed = current.reserved + current.sold
            if settings.total < committed:
                raise SaleFileError(
                    f"sku {settings.sku!r}: stock {settings.total} is below the {committed} units "
                    "already reserved or sold"
                )


def load_sales(engine: Engine, records: list[dict[str, Any]]) -> list[Sale]:
    """Checks every record, then loads each SKU into Redis (whose events carry it to PostgreSQL)."""
    now_ms = redis_now_ms(engine)
    sales = [sale_settings(record, now_ms) for record in records]
    if not sales:
        raise SaleFileError("the sale file has no SKUs")
    check_against_live(engine, sales)
    return [engine.load_sale(settings) for settings in sales]
