"""``flashsale``: one entry point, a thin layer over the library; each command lives in commands/."""

from __future__ import annotations

import logging
import sys

import click

from flashsale.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: FLASHSALE_LOG_LEVEL or INFO)."
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """flashsale: a Redis-first reservation engine for flash sales.

    Settings come from FLASHSALE_* environment variables (FLASHSALE_REDIS_URL, FLASHSALE_DATABASE_URL,
    FLASHSALE_KAFKA_BOOTSTRAP, ...); `flashsale up` starts embedded servers for whatever is not set.
    """
    try:
        settings = Settings.from_env(log_level=log_level)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    ctx.obj = settings


def _register() -> None:
    # Each command module adds itself here; one line per module.
    from flashsale.commands import token

    main.add_command(token.token)
    main.add_command(__import__("flashsale.commands.serve", fromlist=["serve"]).serve)
    main.add_command(__import__("flashsale.commands.db", fromlist=["db"]).db)
    main.add_command(__import__("flashsale.commands.worker", fromlist=["worker"]).worker)
    main.add_command(__import__("flashsale.commands.up", fromlist=["up"]).up)
    main.add_command(__import__("flashsale.commands.sale", fromlist=["sale"]).sale)
    main.add_command(__import__("flashsale.commands.reconcile", fromlist=["reconcile"]).reconcile)
    main.add_command(__import__("flashsale.commands.bench", fromlist=["bench"]).bench)


_register()
