"""``flashsale``: one entry point, a thin layer over the library; each command lives in commands/.

Commands are imported only when run (``LazyGroup``): ``flashsale token`` loads the token code and nothing
else, and ``flashsale --help`` loads no command at all. Packages above the CLI plug commands in through the
``flashsale.commands`` entry-point group (the benchmark harness adds ``flashsale bench`` that way), so the
CLI never imports a layer above it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.metadata import entry_points

import click

from flashsale.engine.settings import Settings

# name -> (module:attribute, one line for --help). The line is here so that --help imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("flashsale.commands.up:up", "Start Redis, PostgreSQL, Kafka, the worker and the API, all here."),
    "serve": (
        "flashsale.commands.serve:serve",
        "Serve the API, health, metrics and the storefront.",
    ),
    "worker": ("flashsale.commands.worker:worker", "Drain the Redis streams into PostgreSQL and Kafka."),
    "db": ("flashsale.commands.db:db", "PostgreSQL schema: apply and inspect migrations."),
    "sale": ("flashsale.commands.sale:sale", "Put SKUs on sale, change one, and watch them."),
    "reconcile": (
        "flashsale.commands.reconcile:reconcile",
        "Check Redis, PostgreSQL and the stream agree.",
    ),
    "token": (
        "flashsale.commands.token:token",
        "Print a bearer token for a user.",
    ),
}
PLUGIN_GROUP = "flashsale.commands"


def _load(target: str) -> click.Command:
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; plugins come from entry points."""

    def _plugins(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*COMMANDS, *self._plugins()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            return _load(COMMANDS[cmd_name][0])
        target = self._plugins().get(cmd_name)
        return _load(target) if target else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        rows += [(name, f"(plugin: {target.partition(':')[0]})") for name, target in self._plugins().items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
