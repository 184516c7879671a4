"""Every command that prints a table also prints one JSON document with --json (issue 10)."""

from __future__ import annotations

import click
import pytest

from flashsale.cli import main

# The commands whose output is a table (or a table-like listing) for people.
TABLE_COMMANDS = [("sale", "status"), ("sale", "load"), ("sale", "put"), ("db", "status"),
                  ("worker", "lag"), ("reconcile",)]  # fmt: skip


def command(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(main)
    found: click.Command = main
    for name in path:
        assert isinstance(found, click.Group), f"{name}: {found.name} has no subcommands"
        sub = found.get_command(ctx, name)
        assert sub is not None, f"no command {' '.join(path)}"
        found = sub
    return found


@pytest.mark.parametrize("path", TABLE_COMMANDS, ids=" ".join)
def test_a_command_that_prints_a_table_takes_json(path: tuple[str, ...]) -> None:
    options = {opt for param in command(path).params for opt in getattr(param, "opts", [])}
    assert "--json" in options


def test_the_check_finds_a_command_without_json() -> None:
    options = {opt for param in command(("db", "migrate")).params for opt in getattr(param, "opts", [])}
    assert "--json" not in options
