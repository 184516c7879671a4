"""The schema (migrations, constraints), `flashsale db`, and lag as the CLI and API read it."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import msgspec
import psycopg
import pytest
from click.testing import CliRunner
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.nodes import partition_nodes
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread, read_lag, total_lag
from flashsale.writeback.database import migrations

from flashsale.cli import main
from flashsale.launcher import PostgresServer, RedisServer


@pytest.fixture
def empty_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"empty_{uuid.uuid4().hex[:10]}"
    admin = postgres_server.url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url_for(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_db_migrate_applies_every_migration_once_and_is_safe_to_repeat(empty_database_url: str) -> None:
    runner = CliRunner()
    env = {"FLASHSALE_DATABASE_URL": empty_database_url}
    first = runner.invoke(main, ["db", "migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "applied 0001_catalog_and_inventory" in first.output
    assert "applied 0004_reservation_pay_until" in first.output
    again = runner.invoke(main, ["db", "migrate"], env=env)
    assert again.exit_code == 0
    assert "up to date" in again.output
    status = runner.invoke(main, ["db", "status"], env=env)
    assert status.output.count("applied ") == len(migrations())
    assert "pending" not in status.output


def test_db_migrate_without_a_database_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["db", "migrate"], env={"FLASHSALE_DATABASE_URL": ""})
    assert result.exit_code != 0
    assert "FLASHSALE_DATABASE_URL is not set" in result.output


def _insert_product(conn: psycopg.Connection[tuple[object, ...]], sku: str) -> None:
    conn.execute(
        "INSERT INTO products (sku_id, name, base_price_cents, flash_sale_price_cents, total_inventory, "
        "per_user_limit, reservation_ttl_ms, is_active, created_at, updated_at) "
        "VALUES (%s, 'x', 100, 50, 10, 1, 60000, true, now(), now())",
        (sku,),
    )


@pytest.mark.parametrize(
    ("counts", "constraint"),
    [
        ((10, 5, 5, 1), "inventory_counts_add_up"),  # total, available, reserved, sold: 5+5+1 != 10
        ((10, 11, -1, 0), "inventory_reserved_count_check"),
        ((0, 1, 0, -1), "inventory_sold_count_check"),
    ],
)
def test_inventory_rows_that_do_not_add_up_are_impossible(
    database_url: str, counts: tuple[int, int, int, int], constraint: str
) -> None:
    with psycopg.connect(database_url) as conn:
        _insert_product(conn, "BAD")
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute(
                "INSERT INTO inventory (sku_id, total_count, available_count, reserved_count, sold_count, "
                "updated_at) VALUES ('BAD', %s, %s, %s, %s, now())",
                counts,
            )
    assert refused.value.diag.constraint_name == constraint


def test_a_reservation_status_outside_the_enum_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        _insert_product(conn, "SKU")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(
                "INSERT INTO reservations (reservation_id, user_id, sku_id, quantity, status, created_at, "
                "expires_at, updated_at) VALUES ('rsv_1_a', 'u', 'SKU', 1, 'HELD', now(), now() + "
                "interval '1 minute', now())"
            )


@pytest.mark.cluster
def test_lag_counts_events_no_worker_has_taken_and_drops_to_zero_after_a_drain(
    engine: Engine, settings: Settings
) -> None:
    engine.load_sale(SaleSettings(sku="MUG", total=50))
    for i in range(20):
        engine.reserve("MUG", f"user-{i}")
    time.sleep(0.05)
    client = engine.redis  # one Redis, or a cluster client
    lags = read_lag(client, settings.keyspace())
    mug = next(lag for lag in lags if lag.partition == engine.keys.for_sku("MUG").index)
    assert (mug.pending, mug.owner, mug.applied_id) == (21, None, "0-0")
    assert mug.oldest_age_ms >= 50
    assert total_lag(lags).pending == 21
    serving = {node.name: node.partitions for node in partition_nodes(client, engine.keys)}
    assert {lag.node for lag in lags} == set(serving)  # one Redis: one node; the cluster: its 3 masters
    assert all(lag.partition in serving[lag.node] and not lag.node_down for lag in lags)

    runner = CliRunner()
    env = settings.as_env()
    shown = runner.invoke(main, ["worker", "lag", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    document = msgspec.json.decode(shown.output)
    assert (document["pending"], document["nodes_down"]) == (21, [])
    assert document["partitions"][mug.partition]["node"] == mug.node

    with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
        assert worker.wait_drained(timeout_s=30)
        mug = read_lag(client, settings.keyspace())[mug.partition]
        assert (mug.pending, mug.oldest_age_ms, mug.owner) == (0, 0, worker.worker.worker_id)
        assert mug.applied_id == mug.published_id != "0-0"
    table = runner.invoke(main, ["worker", "lag"], env=env)
    assert table.exit_code == 0
    assert "total" in table.output
    assert all(name in table.output for name in serving)


@pytest.mark.timeout(60)
def test_lag_answers_with_node_down_when_redis_hangs_rather_than_hanging_with_it() -> None:
    """A frozen Redis (SIGSTOP: connections accepted, nothing answered) shows as NODE DOWN once a read
    times out (redis-py's default socket timeout, 5 s, unless the URL names another), not a hang."""
    with RedisServer() as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            shown = CliRunner().invoke(
                main, ["worker", "lag", "--json"], env={"FLASHSALE_REDIS_URL": server.url}
            )
            took = time.monotonic() - started
        finally:
            server.process.send_signal(signal.SIGCONT)
    assert shown.exit_code == 0, shown.output
    document = msgspec.json.decode(shown.output)
    assert document["nodes_down"] == [f"127.0.0.1:{server.port}"]
    assert all(row["node_down"] for row in document["partitions"])
    assert took < 15
