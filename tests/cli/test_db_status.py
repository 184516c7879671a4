"""`flashsale db status --json`: one document listing every migration and whether it is applied."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from flashsale.writeback.database import migrations

from flashsale.cli import main
from flashsale.launcher import PostgresServer


@pytest.fixture
def unmigrated_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"unmigrated_{uuid.uuid4().hex[:10]}"
    admin = postgres_server.url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url_for(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def status_json(database_url: str) -> dict[str, list[dict[str, object]]]:
    result = CliRunner().invoke(
        main, ["db", "status", "--json"], env={"FLASHSALE_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    document: dict[str, list[dict[str, object]]] = json.loads(result.output)
    return document


def test_db_status_json_lists_every_migration_as_applied_after_migrate(database_url: str) -> None:
    document = status_json(database_url)
    assert set(document) == {"migrations"}
    assert document["migrations"] == [
        {"version": m.version, "name": m.name, "applied": True} for m in migrations()
    ]


def test_db_status_json_shows_pending_migrations_of_a_new_database(unmigrated_database_url: str) -> None:
    rows = status_json(unmigrated_database_url)["migrations"]
    assert len(rows) == len(migrations()) >= 3
    assert {row["applied"] for row in rows} == {False}
    assert [row["version"] for row in rows] == list(range(1, len(rows) + 1))
