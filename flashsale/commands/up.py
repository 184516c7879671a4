"""``flashsale up``: run the whole stack on this machine (the library is flashsale.stack)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import msgspec
from rich.console import Console

from flashsale.engine.settings import Settings
from flashsale.stack import DEMO_SALE, StackOptions, run


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep Redis (AOF), PostgreSQL, the JWT secret and logs here between runs "
    "(default: FLASHSALE_DATA_DIR, else a temporary directory removed on stop).",
)
@click.option("--host", default=None, help="Interface the API listens on (default: FLASHSALE_HOST).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="API port; 0 picks a free one (default: FLASHSALE_PORT, or a free port if that one is taken).",
)
@click.option(
    "--api-workers", type=click.IntRange(1, 64), default=None, help="uvicorn worker processes (default: 1)."
)
@click.option(
    "--sale",
    "sale_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Sale file to load instead of the demo sale (JSON or CSV, see `flashsale sale load --help`).",
)
@click.option("--no-demo", is_flag=True, help="Load no sale at start.")
@click.option("--no-sweeper", is_flag=True, help="Run the worker without the reservation-expiry sweeper.")
@click.option(
    "--redis-cluster",
    "cluster_masters",
    type=click.IntRange(1, 64),
    default=None,
    metavar="N",
    help="Start an embedded Redis Cluster of N masters instead of one Redis server (the 16 partitions "
    "cut evenly between them); the API and worker get FLASHSALE_REDIS_CLUSTER=1.",
)
@click.option(
    "--redis-replicas",
    "cluster_replicas",
    type=click.IntRange(0, 8),
    default=0,
    show_default=True,
    metavar="R",
    help="Replicas of each master of --redis-cluster.",
)
@click.option(
    "--demo-sign-in/--no-demo-sign-in",
    default=True,
    show_default=True,
    help="Let the storefront sign a shopper in by name (POST /api/v1/demo/token). A demo convenience: "
    "anyone reaching the API can then act as any shopper.",
)
@click.pass_obj
def up(
    settings: Settings,
    data_dir: Path | None,
    host: str | None,
    port: int | None,
    api_workers: int | None,
    sale_file: Path | None,
    no_demo: bool,
    no_sweeper: bool,
    cluster_masters: int | None,
    cluster_replicas: int,
    demo_sign_in: bool,
) -> None:
    """Start Redis, PostgreSQL, Kafka, the worker and the API with the storefront, all on this machine.

    Each server comes from its FLASHSALE_* URL when set (FLASHSALE_REDIS_URL, FLASHSALE_DATABASE_URL,
    FLASHSALE_KAFKA_BOOTSTRAP; a Redis Cluster with FLASHSALE_REDIS_CLUSTER=1), else an embedded one is
    started from the pip-installed binaries (Redis as a cluster with --redis-cluster N). The
    database is migrated, a demo sale is loaded (when Redis holds no sale yet), and the URLs are printed.
    Ctrl-C or SIGTERM stops every process started here, in reverse order.
    """
    if settings.log_level.upper() != "DEBUG":
        # The progress lines say what these would; their key=value events stay in the children's logs.
        for name in ("flashsale.launcher", "flashsale.stack"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if cluster_replicas and not cluster_masters:
        raise click.UsageError("--redis-replicas needs --redis-cluster N")
    if cluster_masters and settings.redis_url:
        raise click.UsageError(
            "--redis-cluster starts an embedded Redis Cluster, but FLASHSALE_REDIS_URL names a Redis "
            "already: unset it, or keep it and set FLASHSALE_REDIS_CLUSTER=1 if it is a cluster node"
        )
    settings = msgspec.structs.replace(settings, demo_sign_in=demo_sign_in)
    options = StackOptions(
        data_dir=data_dir or settings.data_dir,
        host=host or settings.host,
        port=port,
        api_workers=api_workers or settings.workers,
        demo_sale=None if no_demo else (sale_file or DEMO_SALE),
        reload_sale=sale_file is not None,
        sweeper=not no_sweeper,
        redis_cluster=cluster_masters or 0,
        redis_replicas=cluster_replicas,
    )
    sys.exit(run(settings, options, Console(soft_wrap=True, highlight=False)))
