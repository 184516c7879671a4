"""``flashsale sale load FILE`` and ``flashsale sale status``: put a sale's SKUs on sale, and watch them.

The sale file's format (JSON or CSV, one record per SKU) is described in ``flashsale.sales``, which reads,
checks and loads it; this module parses options and prints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from flashsale.engine import Engine
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.models import Sale
from flashsale.engine.settings import Settings
from flashsale.sales import SaleFileError, load_sales, read_sale_file, redis_now_ms

if TYPE_CHECKING:
    from flashsale.writeback.database import Queries


def _queries() -> Queries:
    from flashsale.writeback.database import queries

    return queries()


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
    from flashsale.writeback.lag import read_lag

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
