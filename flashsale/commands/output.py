"""How commands print: tables for people, one JSON document for machines (``--json``)."""

from __future__ import annotations

from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

# Wide enough to measure any table at its natural width.
_UNBOUNDED = 10_000


def print_table(table: Table, *, stderr: bool = False) -> None:
    """Prints ``table`` at its natural width, whatever the terminal's: no header or value is ever cut
    (rich would squeeze a wide table into the terminal, or into 80 columns in a pipe, cutting "available"
    to "avail…"); a terminal narrower than the table wraps its lines instead."""
    width = Console(width=_UNBOUNDED).measure(table).maximum
    Console(stderr=stderr, width=width).print(table)


def echo_json(document: Any) -> None:
    """One JSON document on stdout, one line (msgspec: Structs, dataclasses, dicts and lists)."""
    click.echo(msgspec.json.encode(document))


def json_option(function: Any) -> Any:
    """The ``--json`` flag every command that prints a table takes."""
    return click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")(
        function
    )
