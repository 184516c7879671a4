"""The SQL of flashsale, in one home (package data ``flashsale.sql``): numbered migrations in
``sql/migrations``, named queries in ``sql/queries.sql`` (the worker's, reconcile's and the CLI's).

Queries are written procrastinate-style (``-- name: <name> --``, a description line, the statement) and
looked up by name, so no SQL lives in Python strings. ``Queries`` is the one parser; the benchmark's
locking baseline reads its own file with it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg


def sql_dir() -> Traversable:
    """``sql/`` in a checkout, ``flashsale/sql`` inside the installed wheel."""
    return files("flashsale.sql")


# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 7_357_001

_NAME = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

log = logging.getLogger("flashsale.database")


class Queries:
    """The named queries of a .sql file; ``queries["advance_offset"]`` is the statement text."""

    def __init__(self, text: str, source: str = "sql/queries.sql") -> None:
        self.source = source
        self._queries: dict[str, str] = {}
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            lines = body.strip().splitlines()
            # The first line after the name is the description; the rest is the statement.
            statement = "\n".join(lines[1:]).strip().rstrip(";")
            if not statement:
                raise ValueError(f"query {name!r} in {source} has no statement")
            self._queries[name] = statement

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {self.source}") from None

    def names(self) -> list[str]:
        return sorted(self._queries)


@cache
def queries() -> Queries:
    return Queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Traversable

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files in version order; refuses gaps and duplicate numbers."""
    directory = directory or sql_dir() / "migrations"
    found: list[Migration] = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: migration files are named NNNN_description.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(f"{migration.path.name}: expected migration number {expected:04d}")
    return found


def migrate(database_url: str, directory: Traversable | None = None) -> list[Migration]:
    """Applies the migrations not applied yet, each in its own transaction; returns those it applied.

    Safe to run twice and from several processes at once (an advisory lock serialises them).
    """
    pending = migrations(directory)
    applied_now: list[Migration] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        q = queries()
        conn.execute(q["lock_migrations"], {"lock": _MIGRATION_LOCK})
        try:
            conn.execute(q["create_migrations_table"])
            done = {row[0] for row in conn.execute(q["applied_migrations"])}
            for migration in pending:
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        q["record_migration"], {"version": migration.version, "name": migration.name}
                    )
                log.info("event=migration_applied version=%04d name=%s", migration.version, migration.name)
                applied_now.append(migration)
        finally:
            conn.execute(q["unlock_migrations"], {"lock": _MIGRATION_LOCK})
    return applied_now


def applied_migrations(database_url: str) -> list[tuple[int, str]]:
    """(version, name) of every applied migration; empty when the database was never migrated."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute(queries()["migrations_table_exists"]).fetchone()
        if not exists or not exists[0]:
            return []
        return [(row[0], row[1]) for row in conn.execute(queries()["applied_migrations"])]
