"""``flashsale sale load FILE`` and ``flashsale sale status``: put a sale's SKUs on sale, and watch them.

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
import sys
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from engine import Engine
from engine.errors import FlashSaleError
from engine.models import Sale, SaleSettings
from engine.operations import identifier
from flashsale.settings import Settings

if TYPE_CHECKING:
    from writeback.database import Queries

_RELATIVE = re.compile(r"now\s*(?:(?P<sign>[+-])\s*(?P<amount>\d+)\s*(?P<unit>ms|s|m|h|d))?", re.I)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_QUERIES = Path(__file__).resolve().parents[1] / "queries.sql"
_FIELDS = {
    "sku", "name", "price", "price_cents", "flash_price", "flash_price_cents", "stock", "total",
    "per_user_limit", "starts_at", "ends_at", "reservation_ttl_s", "reservation_ttl_ms", "paused",
}  # fmt: skip


def _queries() -> Queries:
    from writeback.database import Queries

    return Queries(_QUERIES.read_text())


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


def require(url: str | None, variable: str) -> str:
    if not url:
        raise click.ClickException(f"{variable} is not set: point it at the server (or run `flashsale up`)")
    return url


def engine_for(settings: Settings) -> Engine:
    url = require(settings.redis_url, "FLASHSALE_REDIS_URL")
    return Engine.from_url(url, settings.engine_config(), max_connections=8)


def table_console(*, stderr: bool = False) -> Console:
    """A console for tables: the terminal's width, or 120 columns when writing to a pipe or a file
    (rich's 80 would cut the counters short)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)


def _money(cents: int) -> str:
    return f"{cents / 100:,.2f}"


def _window(sale: Sale, now_ms: int) -> str:
    if sale.paused:
        return "paused"
    if sale.starts_at and now_ms < sale.starts_at:
        minutes, seconds = divmod((sale.starts_at - now_ms) // 1000, 60)
        return f"starts in {minutes}m{seconds:02d}s" if minutes else f"starts in {seconds}s"
    if sale.ends_at and now_ms >= sale.ends_at:
        return "ended"
    return "live"


@click.group()
def sale() -> None:
    """Load a sale's SKUs and watch their stock."""


def products_in_postgres(database_url: str, loaded: list[Sale]) -> set[str]:
    """The loaded SKUs whose product row already carries the loaded settings (the worker applied them)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        rows = conn.execute(_queries()["sale_products"], {"sku": [sale.sku for sale in loaded]}).fetchall()
    wanted = {(s.sku, s.name, s.flash_price_cents, s.total) for s in loaded}
    return {row[0] for row in rows if tuple(row) in wanted}


def wait_for_postgres(database_url: str, loaded: list[Sale], timeout_s: float) -> set[str]:
    """Waits until the worker has written every loaded SKU to PostgreSQL, or the timeout; returns those in."""
    deadline = time.monotonic() + timeout_s
    while True:
        present = products_in_postgres(database_url, loaded)
        if len(present) == len(loaded) or time.monotonic() >= deadline:
            return present
        time.sleep(0.2)


@sale.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0, 600),
    default=15,
    show_default=True,
    help="Seconds to wait for the write-behind worker to write the SKUs to PostgreSQL "
    "(only with FLASHSALE_DATABASE_URL; 0: do not wait).",
)
@click.pass_obj
def load(settings: Settings, file: Path, wait_s: float) -> None:
    """Put the SKUs of FILE (JSON or CSV) on sale, or change their settings.

    Each SKU goes into Redis through the engine's load_sale script; its sale_loaded event carries it to
    PostgreSQL's products and inventory rows through the write-behind worker (the same path as every
    other change, so PostgreSQL stays an exact prefix of the log). Every SKU is checked first: a bad file
    changes nothing.

    \b
    Fields per SKU (JSON: a list, or {"defaults": {...}, "skus": [...]}; CSV: a header row):
      sku                         required; letters, digits, -_.@
      name                        what shoppers see
      price, flash_price          "129.99" (or price_cents, flash_price_cents)
      stock                       units on sale (required for a new SKU)
      per_user_limit              units one user may hold + buy (default 1)
      starts_at, ends_at          ISO 8601 with zone, ms since epoch, or now, now+10m, now-1h
      reservation_ttl_s           how long a hold lasts (or reservation_ttl_ms)
      paused                      true / false
    """
    engine = engine_for(settings)
    try:
        loaded = load_sales(engine, read_sale_file(file))
    except SaleFileError as error:
        raise click.ClickException(str(error)) from None
    except FlashSaleError as error:
        raise click.ClickException(f"Redis refused the sale: {error}") from None
    except redis.RedisError as error:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {error}") from None
    finally:
        engine.close()
    console = Console()
    console.print(f"Loaded {len(loaded)} SKU(s) into Redis from {file}: {', '.join(s.sku for s in loaded)}")
    if not settings.database_url or wait_s == 0:
        return
    try:
        with console.status("Waiting for the worker to write them to PostgreSQL…"):
            present = wait_for_postgres(settings.database_url, loaded, wait_s)
    except psycopg.Error as error:
        raise click.ClickException(f"cannot read products from PostgreSQL: {error}") from None
    if len(present) == len(loaded):
        console.print(f"PostgreSQL has all {len(loaded)} product(s) (written by the write-behind worker).")
    else:
        missing = sorted({s.sku for s in loaded} - present)
        raise click.ClickException(
            f"loaded into Redis, but after {wait_s:g}s PostgreSQL still lacks {', '.join(missing)}: "
            "is `flashsale worker` running? (it applies them when it runs; nothing is lost)"
        )


def status_table(engine: Engine, lag_by_partition: dict[int, tuple[int, float]] | None) -> Table:
    """One row per SKU; ``lag_by_partition`` maps a partition to (events pending, age of the oldest in s)."""
    now_ms = redis_now_ms(engine)
    table = Table(title="flash sale status", title_justify="left")
    for column in ("SKU", "name", "price", "window", "total", "available", "reserved", "sold", "holds"):
        table.add_column(column, justify="right" if column not in ("SKU", "name", "window") else "left")
    table.add_column("write-behind lag", justify="right")
    table.columns[0].no_wrap = True
    table.columns[1].no_wrap = True  # a long name is cut with an ellipsis rather than tripling the row
    table.columns[1].max_width = 28
    for sale_ in engine.list_sales():
        partition = engine.keys.for_sku(sale_.sku)
        holds = int(engine.redis.zcard(partition.holds(sale_.sku)))
        if lag_by_partition is None:
            lag = "n/a"
        else:
            pending, age_s = lag_by_partition.get(partition.index, (0, 0.0))
            lag = f"{pending} events, {age_s:.1f}s" if pending else "0"
        table.add_row(
            sale_.sku,
            sale_.name,
            _money(sale_.flash_price_cents),
            _window(sale_, now_ms),
            str(sale_.total),
            str(sale_.available),
            str(sale_.reserved),
            str(sale_.sold),
            str(holds),
            lag,
        )
    return table


@sale.command("status")
@click.pass_obj
def status(settings: Settings) -> None:
    """Show each SKU: total, available, reserved, sold, active holds and write-behind lag.

    The lag is that of the SKU's partition stream: events PostgreSQL or Kafka has not taken yet, and how
    long the oldest has waited.
    """
    from writeback.lag import read_lag

    engine = engine_for(settings)
    try:
        lags = {
            lag.partition: (lag.pending, lag.oldest_age_ms / 1000) for lag in read_lag(engine.redis, settings)
        }
        table = status_table(engine, lags)
    except redis.RedisError as error:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {error}") from None
    finally:
        engine.close()
    table_console().print(table)
