"""``flashsale sale load FILE``, ``sale put SKU`` and ``sale status``: put SKUs on sale, change one, and
watch them.

The sale file's format (JSON or CSV, one record per SKU) is described in ``flashsale.sales``, which reads,
checks and loads it; ``sale put`` builds one such record from its options, so a SKU set from the command
line is checked exactly like one from a file. This module parses options and prints.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from flashsale.commands.output import echo_json, json_option, print_table
from flashsale.engine import Engine
from flashsale.engine.errors import FlashSaleError
from flashsale.engine.models import SALE_AND_ROOM_FIELDS, Sale, sale_from_values
from flashsale.engine.nodes import node_clients, partition_nodes
from flashsale.engine.settings import Settings, redact_url
from flashsale.sales import SaleFileError, iso_utc, load_sales, read_sale_file, redis_now_ms

if TYPE_CHECKING:
    from flashsale.writeback.database import Queries
    from flashsale.writeback.lag import PartitionLag


def _queries() -> Queries:
    from flashsale.writeback.database import queries

    return queries()


def require(url: str | None, variable: str) -> str:
    if not url:
        raise click.ClickException(f"{variable} is not set: point it at the server (or run `flashsale up`)")
    return url


def engine_for(settings: Settings) -> Engine:
    """The engine on the Redis the settings name: one server, or a cluster (FLASHSALE_REDIS_CLUSTER=1),
    whose client reads the slot map as it starts."""
    url = require(settings.redis_url, "FLASHSALE_REDIS_URL")
    try:
        return Engine.from_settings(settings, max_connections=8)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        raise click.ClickException(f"cannot reach Redis at {redact_url(url)}: {error}") from None


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


def sale_json(sale: Sale) -> dict[str, Any]:
    """A sale as ``--json`` prints it: the engine's fields (money in cents, times in ms since the epoch,
    0 = no bound), the same names a sale file takes."""
    document: dict[str, Any] = msgspec.to_builtins(sale)
    return document


@click.group()
def sale() -> None:
    """Load a sale's SKUs, change one, and watch their stock."""


# -- reaching PostgreSQL -----------------------------------------------------------------------------------
def _settings_row(sale: Sale) -> tuple[Any, ...]:
    """What PostgreSQL's products row holds of a sale (the ``sale_products`` query's columns)."""
    return (sale.sku, sale.name, sale.price_cents, sale.flash_price_cents, sale.total, sale.per_user_limit,
            sale.starts_at, sale.ends_at, sale.reservation_ttl_ms, sale.paused)  # fmt: skip


def products_in_postgres(database_url: str, loaded: list[Sale]) -> set[str]:
    """The loaded SKUs whose product row carries every loaded setting (the worker applied them)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        rows = conn.execute(_queries()["sale_products"], {"sku": [sale.sku for sale in loaded]}).fetchall()
    wanted = {_settings_row(sale) for sale in loaded}
    return {row[0] for row in rows if tuple(row) in wanted}


def wait_for_postgres(database_url: str, loaded: list[Sale], timeout_s: float) -> set[str]:
    """Waits until the worker has written every loaded SKU to PostgreSQL, or the timeout; returns those in."""
    deadline = time.monotonic() + timeout_s
    while True:
        present = products_in_postgres(database_url, loaded)
        if len(present) == len(loaded) or time.monotonic() >= deadline:
            return present
        time.sleep(0.2)


def _await_postgres(settings: Settings, loaded: list[Sale], wait_s: float, *, quiet: bool) -> str:
    """ "written" once PostgreSQL has every loaded SKU's settings, "unchecked" without a database or a
    wait; a one-sentence error when the worker has not written them in time."""
    if not settings.database_url or wait_s == 0:
        return "unchecked"
    try:
        with Console(stderr=True, quiet=quiet).status("Waiting for the worker to write them to PostgreSQL…"):
            present = wait_for_postgres(settings.database_url, loaded, wait_s)
    except psycopg.Error as error:
        raise click.ClickException(f"cannot read products from PostgreSQL: {error}") from None
    if len(present) < len(loaded):
        missing = sorted({s.sku for s in loaded} - present)
        raise click.ClickException(
            f"loaded into Redis, but after {wait_s:g}s PostgreSQL still lacks {', '.join(missing)}: "
            "is `flashsale worker` running? (it applies them when it runs; nothing is lost)"
        )
    return "written"


def _load(settings: Settings, records: list[dict[str, Any]]) -> tuple[list[Sale], int]:
    """Checks and loads the records into Redis; (the sales as loaded, Redis's clock)."""
    engine = engine_for(settings)
    try:
        loaded = load_sales(engine, records)
        return loaded, redis_now_ms(engine)
    except SaleFileError as error:
        raise click.ClickException(str(error)) from None
    except FlashSaleError as error:
        raise click.ClickException(f"Redis refused the sale: {error}") from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        where = redact_url(settings.redis_url)
        raise click.ClickException(f"cannot reach Redis at {where}: {error}") from None
    finally:
        engine.close()


def wait_option(function: Any) -> Any:
    return click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(0, 600),
        metavar="SECONDS",
        default=15,
        show_default=True,
        help="Seconds to wait for the write-behind worker to write the settings to PostgreSQL "
        "(only with FLASHSALE_DATABASE_URL; 0: do not wait).",
    )(function)


# -- sale load ---------------------------------------------------------------------------------------------
@sale.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@wait_option
@json_option
@click.pass_obj
def load(settings: Settings, file: Path, wait_s: float, as_json: bool) -> None:
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
      stock                       units on sale (required for a new SKU; or total)
      per_user_limit              units one user may hold + buy (default 1)
      starts_at, ends_at          ISO 8601 with zone, ms since epoch, or now, now+10m, now-1h; "" = none
      reservation_ttl_s           how long a hold lasts (or reservation_ttl_ms)
      paused                      true / false

    \b
    --json prints {"file": ..., "sales": [<sale>, ...], "postgres": "written" | "unchecked"}; a sale
    has the fields of `flashsale sale status --json`, less window, holds and writeback_lag.
    """
    try:
        records = read_sale_file(file)
    except SaleFileError as error:
        raise click.ClickException(str(error)) from None
    loaded, _ = _load(settings, records)
    if not as_json:
        click.echo(f"Loaded {len(loaded)} SKU(s) into Redis from {file}: {', '.join(s.sku for s in loaded)}")
    postgres = _await_postgres(settings, loaded, wait_s, quiet=as_json)
    if as_json:
        echo_json({"file": str(file), "sales": [sale_json(s) for s in loaded], "postgres": postgres})
    elif postgres == "written":
        click.echo(f"PostgreSQL has all {len(loaded)} product(s) (written by the write-behind worker).")


# -- sale put ----------------------------------------------------------------------------------------------
def put_table(sale: Sale, now_ms: int) -> Table:
    """One SKU's settings and counters, a row each."""
    table = Table(title=f"sale {sale.sku}", title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    for name, value in (
        ("name", sale.name),
        ("price", _money(sale.price_cents)),
        ("flash price", _money(sale.flash_price_cents)),
        ("total", str(sale.total)),
        ("available", str(sale.available)),
        ("reserved", str(sale.reserved)),
        ("sold", str(sale.sold)),
        ("per-user limit", str(sale.per_user_limit)),
        ("starts at", iso_utc(sale.starts_at) if sale.starts_at else "-"),
        ("ends at", iso_utc(sale.ends_at) if sale.ends_at else "-"),
        ("hold lasts", f"{sale.reservation_ttl_ms / 1000:g}s"),
        ("window", _window(sale, now_ms)),
    ):
        table.add_row(name, value)
    return table


@sale.command("put")
@click.argument("sku")
@click.option("--name", help="What shoppers see (1-200 bytes).")
@click.option("--price", metavar="AMOUNT", help='List price in currency units, e.g. "129.99".')
@click.option("--flash-price", metavar="AMOUNT", help="Price during the sale.")
@click.option(
    "--total",
    "--stock",
    "total",
    metavar="UNITS",
    help="Units on sale: needed for a new SKU; never below what is reserved or sold.",
)
@click.option(
    "--limit", "--per-user-limit", "per_user_limit", metavar="UNITS", help="Units one user may hold + buy."
)
@click.option(
    "--starts-at",
    metavar="WHEN",
    help='ISO 8601 with zone, ms since the epoch, now, now+10m, now-1h, ...; "" = no bound.',
)
@click.option("--ends-at", metavar="WHEN", help="Like --starts-at; must be after it.")
@click.option("--ttl", "reservation_ttl_s", metavar="SECONDS", help="How long a hold lasts.")
@click.option("--pause/--resume", "paused", default=None, help="Refuse reservations, or take them again.")
@click.option(
    "--buckets",
    metavar="B",
    help="Split a new SKU's stock into B buckets on different partitions (a hot SKU past one Redis core);"
    " fixed once the sale exists.",
)
@click.option(
    "--waiting-room",
    "waiting_room_admit_per_s",
    metavar="PER_S",
    help="Put a waiting room in front of the sale, admitting PER_S shoppers a second.",
)
@click.option("--waiting-room-opens", "waiting_room_opens_at", metavar="WHEN", help="When the line opens.")
@click.option(
    "--waiting-room-stock-factor",
    "waiting_room_stock_factor",
    metavar="N",
    help="At most N x available shoppers admitted and not yet reserving (0: the rate alone).",
)
@click.option(
    "--waiting-room-admission",
    "waiting_room_admission_s",
    metavar="SECONDS",
    help="How long an admission lasts.",
)
@click.option(
    "--no-waiting-room", "no_waiting_room", is_flag=True, default=None, help="Turn the waiting room off."
)
@wait_option
@json_option
@click.pass_obj
def put(settings: Settings, sku: str, wait_s: float, as_json: bool, **options: str | bool | None) -> None:
    """Create SKU's sale or change its settings; the settings not given keep their value.

    Checked like a sale file's record (sale load --help), through the same load_sale script, and written
    to PostgreSQL by the write-behind worker.

    \b
    --json prints {"sale": <sale>, "postgres": "written" | "unchecked"}; a sale has the fields of
    `flashsale sale status --json`, less window, holds and writeback_lag.
    """
    # The options are named after the sale file's fields: SKU and options make one record of a file.
    record: dict[str, Any] = {"sku": sku}
    if options.pop("no_waiting_room", None):
        record["waiting_room"] = "false"
    for field, value in options.items():
        if value is not None:
            record[field] = str(value).lower() if isinstance(value, bool) else value
    if len(record) == 1:
        raise click.UsageError("nothing to change: give at least one setting (--total, --limit, --name, ...)")
    (loaded,), now_ms = _load(settings, [record])
    postgres = _await_postgres(settings, [loaded], wait_s, quiet=as_json)
    if as_json:
        echo_json({"sale": sale_json(loaded), "postgres": postgres})
        return
    print_table(put_table(loaded, now_ms))
    if postgres == "written":
        click.echo("PostgreSQL has it (written by the write-behind worker).")


# -- sale status -------------------------------------------------------------------------------------------
_STATUS_COLUMNS = ("SKU", "name", "price", "window", "total", "available", "reserved", "sold", "holds",
                   "queue", "write-behind lag")  # fmt: skip


def _node_sales(
    engine: Engine, client: redis.Redis, partitions: tuple[int, ...]
) -> list[tuple[Sale, int, int]]:
    """The sales of one node's partitions with their open holds and partition: two pipelined round trips
    to it, and a pass over each partition's open records (HSCAN, 1,000 a round trip), which count the
    holds (a SKU's deadline indexes may still list ended holds: lua/includes/holds.lua). A SKU split into
    stock buckets has one sale per bucket, each in its bucket's partition."""
    catalogs = client.pipeline(transaction=False)
    for index in partitions:
        catalogs.smembers(engine.keys.partition(index).catalog())
    found = [
        (str(sku), index)
        for index, members in zip(partitions, catalogs.execute(), strict=True)
        for sku in sorted(members)
    ]
    pipe = client.pipeline(transaction=False)
    for sku, index in found:
        pipe.hmget(engine.keys.partition(index).sku(sku), SALE_AND_ROOM_FIELDS)
    replies = pipe.execute()
    holds: Counter[tuple[str, int]] = Counter()
    for index in partitions:
        for _rid, record in client.hscan_iter(engine.keys.partition(index).open_holds(), count=1000):
            holds[(str(record).split(" ", 1)[0], index)] += 1
    return [
        (sale_, holds[(sku, index)], index)
        for (sku, index), values in zip(found, replies, strict=True)
        if (sale_ := sale_from_values(values)) is not None
    ]


def _one_sku(
    engine: Engine, rows: list[tuple[Sale, int, int, str]]
) -> tuple[Sale, int, str, list[dict[str, Any]]]:
    """A SKU from its rows (one, or one per stock bucket): bucket 0's settings, the counters and holds
    summed, and each bucket as ``sale status --json`` lists it (empty without buckets)."""
    rows = sorted(rows, key=lambda row: engine.keys.bucket_of(row[0].sku, row[2]))
    first, holds, _index, node = rows[0]
    if len(rows) == 1 and first.buckets == 1:
        return first, holds, node, []
    detail = [
        {
            "bucket": engine.keys.bucket_of(s.sku, index),
            "partition": index,
            "node": where,
            "available": s.available,
            "reserved": s.reserved,
            "sold": s.sold,
            "holds": held,
        }
        for s, held, index, where in rows
    ]
    summed = {n: sum(row[n] for row in detail) for n in ("available", "reserved", "sold", "holds")}
    moving = first.total - summed["available"] - summed["reserved"] - summed["sold"]
    counters = {n: summed[n] for n in ("available", "reserved", "sold")}
    return msgspec.structs.replace(first, **counters, moving=moving), summed["holds"], node, detail


def sale_status(engine: Engine, lags: list[PartitionLag] | None) -> dict[str, Any]:
    """Every SKU's sale, window, active holds, its partition and the Redis node serving it, and its
    partition's write-behind lag (None: not known), as ``sale status --json`` prints it.

    Read node by node (on one Redis: the one node), so that a node that does not answer is named, with
    its partitions, in ``unreadable_nodes`` while the other nodes' SKUs are still shown."""
    nodes = partition_nodes(engine.redis, engine.keys)
    clients = node_clients(engine.redis)
    now_ms = redis_now_ms(engine)
    lag_of = {lag.partition: lag for lag in lags or ()}
    found: list[tuple[Sale, int, int, str]] = []
    unreadable = []
    for node in nodes:
        try:
            client = clients.get(node.name)
            if client is None:
                raise redis.ConnectionError("the cluster client has no connection to it")
            read = _node_sales(engine, client, node.partitions)
            found += [(sale_, holds, index, node.name) for sale_, holds, index in read]
        except redis.RedisError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            unreadable.append({"node": node.name, "partitions": list(node.partitions), "error": reason})
    by_sku: dict[str, list[tuple[Sale, int, int, str]]] = {}
    for row in found:
        by_sku.setdefault(row[0].sku, []).append(row)
    sales = []
    for sku in sorted(by_sku):
        sale_, holds, node_name, buckets = _one_sku(engine, by_sku[sku])
        partition = engine.keys.for_sku(sale_.sku)
        lag = lag_of.get(partition.index)
        sales.append(
            {
                **sale_json(sale_),
                "partition": partition.index,
                "node": node_name,
                "window": _window(sale_, now_ms),
                "holds": holds,
                "bucket_detail": buckets,
                "queue": _queue_json(engine, sale_),
                "writeback_lag": None
                if lags is None
                else {
                    "partition": partition.index,
                    "pending": lag.pending if lag else 0,
                    "oldest_age_ms": lag.oldest_age_ms if lag else 0,
                },
            }
        )
    return {
        "now": now_ms,
        "nodes": [{"node": node.name, "partitions": list(node.partitions)} for node in nodes],
        "unreadable_nodes": unreadable,
        "sales": sales,
    }


def _queue_json(engine: Engine, sale_: Sale) -> dict[str, Any] | None:
    """A waiting room as ``sale status --json`` shows it; None for a sale without one on."""
    if sale_.waiting_room is None or not sale_.waiting_room.on:
        return None
    q = engine.queue_figures(sale_.sku)
    return {
        "line": q.line,
        "admitted_now": q.admitted_live,
        "joined": q.joined,
        "admitted": q.admitted,
        "abandoned": q.lapsed,
        "sent_away": q.sent_away,
        "closed": q.closed,
        "admit_per_s": sale_.waiting_room.admit_per_s,
        "first_admitted_at": q.first_admitted_at or None,
        "wait_p50_s": q.wait_quantile_s(0.5),
        "wait_p99_s": q.wait_quantile_s(0.99),
    }


def _queue_cell(queue: dict[str, Any] | None) -> str:
    if queue is None:
        return "-"
    if queue["closed"]:
        return f"closed ({queue['closed']}), {queue['sent_away']} sent away"
    return f"{queue['line']} in line, {queue['admitted_now']} admitted ({queue['admit_per_s']}/s)"


def status_table(status: dict[str, Any]) -> Table:
    """One row per SKU of ``sale_status``: no header or number is ever cut (print with print_table)."""
    table = Table(title="flash sale status", title_justify="left")
    show_nodes = len(status.get("nodes", ())) > 1  # a cluster: which master serves each SKU
    for column in _STATUS_COLUMNS:
        left = column in ("SKU", "name", "window")
        table.add_column(column, justify="left" if left else "right", no_wrap=True, min_width=len(column))
    if show_nodes:
        table.add_column("node", no_wrap=True)
    table.columns[1].max_width = 28  # a long name is cut with an ellipsis rather than widening every row
    table.columns[1].overflow = "ellipsis"
    for row in status["sales"]:
        lag = row["writeback_lag"]
        if lag is None:
            shown_lag = "n/a"
        elif lag["pending"]:
            shown_lag = f"{lag['pending']} events, {lag['oldest_age_ms'] / 1000:.1f}s"
        else:
            shown_lag = "0"
        table.add_row(
            row["sku"] + (f" ({row['buckets']} buckets)" if row["buckets"] > 1 else ""),
            row["name"],
            _money(row["flash_price_cents"]),
            row["window"],
            *(str(row[field]) for field in ("total", "available", "reserved", "sold", "holds")),
            _queue_cell(row["queue"]),
            shown_lag,
            *([row["node"] or "?"] if show_nodes else []),
        )
    return table


def bucket_table(status: dict[str, Any]) -> Table:
    """One row per stock bucket of each SKU split into buckets, and the units moving between two."""
    table = Table(title="stock buckets", title_justify="left")
    for column in ("SKU", "bucket", "partition", "node", "available", "reserved", "sold", "holds"):
        table.add_column(column, justify="left" if column in ("SKU", "node") else "right", no_wrap=True)
    for row in status["sales"]:
        for b in row["bucket_detail"]:
            cells = (
                b["bucket"],
                b["partition"],
                b["node"],
                b["available"],
                b["reserved"],
                b["sold"],
                b["holds"],
            )
            table.add_row(row["sku"], *map(str, cells))
        if row["bucket_detail"]:
            table.add_row(row["sku"], "moving", "", "", str(row["moving"]), "", "", "")
    return table


def _lags(engine: Engine) -> list[PartitionLag] | None:
    """The write-behind lag of every partition; None where it cannot be read here: on a cluster
    (writeback.lag reads it in one pipeline that asks TIME, which redis-py's cluster pipeline refuses), or
    with a node down (the lag of every partition is one pipeline). Shown as n/a."""
    from flashsale.writeback.lag import read_lag

    try:
        return read_lag(engine.redis, engine.keys)
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return None


@sale.command("status")
@json_option
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Show each SKU: total, available, reserved, sold, active holds and write-behind lag.

    The lag is that of the SKU's partition stream: events PostgreSQL or Kafka has not taken yet, and how
    long the oldest has waited.

    \b
    --json prints {"now": <Redis clock, ms>, "sales": [<sale>, ...]}; a sale has sku, name, price_cents,
    flash_price_cents, total, available, reserved, sold, per_user_limit, starts_at, ends_at (ms, 0 = no
    bound), reservation_ttl_ms, paused, created_at, updated_at, window ("live", "paused", "ended",
    "starts in ..."), holds, queue (null without a waiting room, else {line, admitted_now, joined,
    admitted, abandoned, sent_away, closed, admit_per_s, first_admitted_at, wait_p50_s, wait_p99_s}),
    writeback_lag {partition, pending, oldest_age_ms} (null: not known), partition and node (the Redis
    serving it, host:port), buckets and moving (a SKU split into stock buckets: its counters are the
    sums, moving the units between two buckets) and bucket_detail ([] without buckets, else one
    {bucket, partition, node, available, reserved, sold, holds} per bucket); the document also lists
    "nodes" [{node, partitions}] and "unreadable_nodes" [{node, partitions, error}].

    A SKU split into stock buckets shows "(B buckets)" after its id, and a second table lists its
    buckets.

    On a Redis Cluster (FLASHSALE_REDIS_CLUSTER=1) the table adds a node column. A node that does not
    answer is named with its partitions, the other nodes' SKUs are still shown, and the exit code is 1.
    """
    engine = engine_for(settings)
    try:
        document = sale_status(engine, _lags(engine))
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        where = redact_url(settings.redis_url)
        raise click.ClickException(f"cannot reach Redis at {where}: {error}") from None
    finally:
        engine.close()
    if as_json:
        echo_json(document)
    else:
        print_table(status_table(document))
        if any(row["bucket_detail"] for row in document["sales"]):
            print_table(bucket_table(document))
    if document["unreadable_nodes"]:
        for node in document["unreadable_nodes"]:
            click.echo(
                f"Error: Redis node {node['node']} could not be read ({node['error']}): the SKUs of "
                f"partitions {', '.join(map(str, node['partitions']))} are not shown",
                err=True,
            )
        sys.exit(1)
