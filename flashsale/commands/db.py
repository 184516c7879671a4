"""``flashsale db migrate`` / ``flashsale db status``: the PostgreSQL schema (sql/migrations)."""

from __future__ import annotations

import click
import psycopg

from flashsale.commands.output import echo_json, json_option
from flashsale.engine.settings import Settings


def _url(settings: Settings) -> str:
    if not settings.database_url:
        raise click.ClickException("FLASHSALE_DATABASE_URL is not set")
    return settings.database_url


@click.group()
def db() -> None:
    """PostgreSQL schema: apply and inspect migrations."""


@db.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Apply the migrations not applied yet (safe to run again)."""
    from flashsale.writeback.database import migrate as apply_migrations

    try:
        applied = apply_migrations(_url(settings))
    except psycopg.Error as error:
        raise click.ClickException(f"migration failed: {error}") from None
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        click.echo("database is up to date")


@db.command()
@json_option
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """List migrations and whether each is applied.

    \b
    --json prints {"migrations": [{"version": 1, "name": "...", "applied": true}, ...]}.
    """
    from flashsale.writeback.database import applied_migrations, migrations

    try:
        done = dict(applied_migrations(_url(settings)))
    except psycopg.Error as error:
        raise click.ClickException(f"cannot read migrations: {error}") from None
    rows = [
        {"version": migration.version, "name": migration.name, "applied": migration.version in done}
        for migration in migrations()
    ]
    if as_json:
        echo_json({"migrations": rows})
        return
    for row in rows:
        mark = "applied" if row["applied"] else "pending"
        click.echo(f"{mark:8} {row['version']:04d}_{row['name']}")
