"""`flashsale sale load` and `flashsale sale status` against real Redis and PostgreSQL.

The tests marked ``cluster`` run on one Redis and on a 3-master Redis Cluster ([single], [cluster])."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from flashsale.engine import Engine, SaleNotActive
from flashsale.engine.nodes import partition_nodes

from flashsale.cli import main
from flashsale.launcher import RedisCluster, free_port

Drain = Callable[[Engine, str], int]

SALE = {
    "defaults": {"per_user_limit": 2, "reservation_ttl_s": 90, "starts_at": "now-1m", "ends_at": "now+2h"},
    "skus": [
        {"sku": "SKU-CAM-1", "name": "Mirrorless Camera", "price": "1299.00", "flash_price": "999.99",
         "stock": 30},
        {"sku": "SKU-LENS-2", "name": "50mm Lens", "price_cents": 39900, "flash_price_cents": 29900,
         "stock": 12, "per_user_limit": 1, "starts_at": "now+15m"},
    ],
}  # fmt: skip


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def write_json(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "sale.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def redis_env(redis_url: str, on_cluster: bool) -> dict[str, str]:
    """The variables that point a command at this test's Redis, one server or a cluster."""
    return {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_REDIS_CLUSTER": "1" if on_cluster else "0"}


def redis_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.cluster
def test_load_json_puts_every_sku_on_sale_with_prices_limits_and_window(
    engine: Engine, redis_env: dict[str, str], tmp_path: Path
) -> None:
    result = cli(redis_env, "sale", "load", str(write_json(tmp_path, SALE)))
    assert result.exit_code == 0, result.output
    now = redis_ms(engine)
    camera, lens = engine.get_sale("SKU-CAM-1"), engine.get_sale("SKU-LENS-2")
    assert (camera.price_cents, camera.flash_price_cents, camera.total, camera.available) == (
        129900,
        99999,
        30,
        30,
    )
    assert (camera.per_user_limit, camera.reservation_ttl_ms) == (2, 90_000)
    assert abs(camera.starts_at - (now - 60_000)) < 10_000
    assert abs(camera.ends_at - (now + 7_200_000)) < 10_000
    assert (lens.price_cents, lens.flash_price_cents, lens.per_user_limit) == (39900, 29900, 1)
    assert abs(lens.starts_at - (now + 900_000)) < 10_000
    assert engine.reserve("SKU-CAM-1", "ann").status == "RESERVED"
    with pytest.raises(Exception, match=r"not open now"):
        engine.reserve("SKU-LENS-2", "ann")


def test_load_csv_with_iso_times(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "sale.csv"
    path.write_text(
        "sku,name,price,flash_price,stock,per_user_limit,starts_at,ends_at\n"
        "SKU-HEADSET,Wireless Headset,199.00,129.50,75,3,2026-01-01T00:00:00Z,2036-01-01T00:00:00Z\n"
        "SKU-DOCK,USB-C Dock,89.99,59.99,40,,,\n"
    )
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "load", str(path))
    assert result.exit_code == 0, result.output
    headset, dock = engine.get_sale("SKU-HEADSET"), engine.get_sale("SKU-DOCK")
    assert (headset.flash_price_cents, headset.total, headset.per_user_limit) == (12950, 75, 3)
    assert headset.starts_at == 1767225600000
    assert headset.ends_at == 2082758400000
    assert (dock.total, dock.per_user_limit, dock.starts_at, dock.ends_at) == (40, 1, 0, 0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"price_cents": None, "price": "12.345"},
            "sku 'SKU-LENS-2': price '12.345' must be a non-negative amount with at most 2",
        ),
        ({"price": "12.00"}, "sku 'SKU-LENS-2': give price or price_cents, not both"),
        ({"stock": -1}, "sku 'SKU-LENS-2': stock must be at least 0"),
        ({"starts_at": "tomorrow"}, "sku 'SKU-LENS-2': starts_at 'tomorrow' is not ISO 8601"),
        ({"colour": "red"}, "sku 'SKU-LENS-2': unknown field(s) colour"),
        ({"sku": "bad sku"}, "sku must be 1-128 letters"),
        # the load_sale script's own bound: refused before SKU-CAM-1 is written, not half way through
        ({"stock": 2_000_000_000}, "sku 'SKU-LENS-2': stock must be at most 1000000000"),
    ],
)
def test_a_bad_sku_refuses_the_whole_file_and_changes_nothing(
    engine: Engine, redis_url: str, tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    document = json.loads(json.dumps(SALE))
    document["skus"][1].update(bad)
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "load", str(write_json(tmp_path, document)))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert engine.list_sales() == []


def test_shrinking_stock_below_what_is_held_is_refused_before_any_write(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    for user in ("u1", "u2", "u3"):
        engine.reserve("SKU-CAM-1", user, quantity=2)
    document = json.loads(json.dumps(SALE))
    document["skus"][0]["stock"] = 5  # 6 units are held
    document["skus"][1]["name"] = "Renamed Lens"
    result = cli(env, "sale", "load", str(write_json(tmp_path, document)))
    assert result.exit_code == 1
    assert "sku 'SKU-CAM-1': stock 5 is below the 6 units already reserved or sold" in result.output
    assert engine.get_sale("SKU-CAM-1").total == 30
    assert engine.get_sale("SKU-LENS-2").name == "50mm Lens"


def test_a_bound_that_no_longer_fits_the_window_kept_in_redis_is_refused_before_any_write(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    change = [{"sku": "SKU-CAM-1", "name": "Renamed Camera"}, {"sku": "SKU-LENS-2", "ends_at": "now+5m"}]
    result = cli(env, "sale", "load", str(write_json(tmp_path, change)))
    assert result.exit_code == 1
    assert "sku 'SKU-LENS-2': ends_at must be after starts_at (its starts_at stays" in result.output
    assert engine.get_sale("SKU-CAM-1").name == "Mirrorless Camera"


def test_load_waits_until_the_worker_wrote_the_products_to_postgresql(
    engine: Engine, redis_url: str, database_url: str, tmp_path: Path, drain: Drain
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    path = write_json(tmp_path, SALE)
    # The "worker": drains the streams the worker's way while the command waits for PostgreSQL.
    applied: list[int] = []
    worker = threading.Timer(1.0, lambda: applied.append(drain(engine, database_url)))
    worker.start()
    started = time.monotonic()
    result = cli(env, "sale", "load", str(path), "--wait", "20")
    waited = time.monotonic() - started  # before join(), which itself waits for the "worker"
    worker.join()
    assert result.exit_code == 0, result.output
    assert waited >= 1.0
    assert applied == [2]
    assert "PostgreSQL has all 2 product(s)" in result.output
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT p.sku_id, p.flash_sale_price_cents, p.per_user_limit, i.total_count, i.available_count "
            "FROM products p JOIN inventory i USING (sku_id) ORDER BY sku_id"
        ).fetchall()
    assert rows == [("SKU-CAM-1", 99999, 2, 30, 30), ("SKU-LENS-2", 29900, 1, 12, 12)]


def test_load_without_a_running_worker_says_so(redis_url: str, database_url: str, tmp_path: Path) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    result = cli(env, "sale", "load", str(write_json(tmp_path, SALE)), "--wait", "0.5")
    assert result.exit_code == 1
    assert "PostgreSQL still lacks SKU-CAM-1, SKU-LENS-2: is `flashsale worker` running?" in result.output


@pytest.mark.cluster
def test_status_shows_counters_holds_and_write_behind_lag(
    engine: Engine, redis_env: dict[str, str], on_cluster: bool, database_url: str, tmp_path: Path
) -> None:
    env = {**redis_env, "COLUMNS": "200"}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    engine.reserve("SKU-CAM-1", "ann", quantity=2)
    hold = engine.reserve("SKU-CAM-1", "bob")
    engine.confirm(engine.begin_checkout(hold.id, "bob", "CREDIT_CARD").id, "bob")
    result = cli(env, "sale", "status")
    assert result.exit_code == 0, result.output
    camera = next(line for line in result.output.splitlines() if "SKU-CAM-1" in line)
    cells = [cell.strip() for cell in camera.split("│") if cell.strip()]
    # SKU, name, price, window, total, available, reserved, sold, holds, queue, lag
    assert cells[3:10] == ["live", "30", "27", "2", "1", "1", "-"]
    # sale_loaded, reserved, reserved, checkout_started, confirmed (writeback.lag cannot read a cluster
    # yet: n/a there)
    if cells[10] != "n/a" or not on_cluster:
        assert cells[10].startswith("5 events")
    # On a cluster the last column names the master serving the SKU's partition.
    nodes = partition_nodes(engine.redis, engine.keys)
    owner = next(n.name for n in nodes if engine.keys.for_sku("SKU-CAM-1").index in n.partitions)
    assert cells[11:] == ([owner] if on_cluster else [])
    lens = next(line for line in result.output.splitlines() if "SKU-LENS-2" in line)
    assert "starts in" in lens


# -- sale status: the whole table, and --json ----------------------------------------------------------------
SALE_KEYS = {
    "sku", "name", "price_cents", "flash_price_cents", "total", "available", "reserved", "sold",
    "per_user_limit", "starts_at", "ends_at", "reservation_ttl_ms", "paused", "created_at", "updated_at",
    "waiting_room", "buckets", "moving",
}  # fmt: skip
STATUS_HEADERS = ("SKU", "name", "price", "window", "total", "available", "reserved", "sold", "holds",
                  "queue", "write-behind lag")  # fmt: skip


def test_status_never_cuts_a_header_or_a_value_however_wide_the_table(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    sku = "SKU-" + "EXTRA-LONG-IDENTIFIER-" * 4  # 92 characters: the table is far wider than 120 columns
    document = {"skus": [{"sku": sku, "name": "A name longer than the name column allows", "stock": 1000000,
                          "starts_at": "now+59m"}]}  # fmt: skip
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, document))).exit_code == 0
    result = cli(env, "sale", "status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "SKU" in line)
    assert [cell.strip() for cell in header.split("┃") if cell.strip()] == list(STATUS_HEADERS)
    row = next(line for line in lines if sku in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[0] == sku
    assert cells[1].endswith("…")  # only the name is shortened, on purpose
    assert cells[3].startswith("starts in 58m")
    assert cells[4:6] == ["1000000", "1000000"]
    assert cells[9] == "-"  # no waiting room
    assert cells[10] == "1 events, " + cells[10].split(", ")[1]


@pytest.mark.cluster
def test_status_json_is_one_document_with_every_sku_its_holds_lag_and_node(
    engine: Engine, redis_env: dict[str, str], on_cluster: bool, tmp_path: Path
) -> None:
    env = redis_env
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    engine.reserve("SKU-CAM-1", "ann", quantity=2)
    hold = engine.reserve("SKU-CAM-1", "bob")
    engine.confirm(engine.begin_checkout(hold.id, "bob", "CREDIT_CARD").id, "bob")
    result = cli(env, "sale", "status", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"now", "nodes", "unreadable_nodes", "sales"}
    assert document["unreadable_nodes"] == []
    assert abs(document["now"] - redis_ms(engine)) < 10_000
    camera, lens = document["sales"]
    assert set(camera) == SALE_KEYS | {
        "partition", "node", "window", "holds", "bucket_detail", "queue", "writeback_lag"
    }  # fmt: skip
    # Each sale names its partition and the Redis node serving it; "nodes" lists every node's partitions.
    nodes = partition_nodes(engine.redis, engine.keys)
    assert document["nodes"] == [{"node": n.name, "partitions": list(n.partitions)} for n in nodes]
    assert len(nodes) == (3 if on_cluster else 1)
    for row in (camera, lens):
        assert row["partition"] == engine.keys.for_sku(row["sku"]).index
        assert row["node"] == next(n.name for n in nodes if row["partition"] in n.partitions)
    assert camera["queue"] is None  # no waiting room
    assert (camera["sku"], camera["window"], camera["holds"]) == ("SKU-CAM-1", "live", 1)
    assert (camera["total"], camera["available"], camera["reserved"], camera["sold"]) == (30, 27, 2, 1)
    assert (camera["price_cents"], camera["flash_price_cents"], camera["per_user_limit"]) == (
        129900,
        99999,
        2,
    )
    lag = camera["writeback_lag"]
    if lag is None and on_cluster:  # writeback.lag cannot read a cluster yet (its pipeline asks TIME)
        return
    assert set(lag) == {"partition", "pending", "oldest_age_ms"}
    assert lag["partition"] == engine.keys.for_sku("SKU-CAM-1").index
    assert lag["pending"] == 5  # sale_loaded, reserved, reserved, checkout_started, confirmed
    assert (lens["sku"], lens["window"][:9], lens["holds"]) == ("SKU-LENS-2", "starts in", 0)


def test_status_json_of_an_empty_sale(redis_url: str) -> None:
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sales"] == []


# -- sale load --json --------------------------------------------------------------------------------------
def test_load_json_lists_the_loaded_sales(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    path = write_json(tmp_path, SALE)
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "load", str(path), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"file", "sales", "postgres"}
    assert (document["file"], document["postgres"]) == (str(path), "unchecked")
    assert [set(sale) for sale in document["sales"]] == [SALE_KEYS, SALE_KEYS]
    assert [sale["sku"] for sale in document["sales"]] == ["SKU-CAM-1", "SKU-LENS-2"]
    assert document["sales"][0]["total"] == engine.get_sale("SKU-CAM-1").total == 30


def test_load_json_says_when_postgresql_has_them(
    engine: Engine, redis_url: str, database_url: str, tmp_path: Path, drain: Drain
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    worker = threading.Timer(0.5, lambda: drain(engine, database_url))
    worker.start()
    result = cli(env, "sale", "load", str(write_json(tmp_path, SALE)), "--json", "--wait", "20")
    worker.join()
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["postgres"] == "written"


# -- sale put ----------------------------------------------------------------------------------------------
@pytest.mark.cluster
def test_put_creates_a_sku_with_every_setting_and_prints_it(
    engine: Engine, redis_env: dict[str, str]
) -> None:
    result = cli(
        redis_env,
        "sale", "put", "SKU-MUG", "--name", "Flash mug", "--price", "12.00", "--flash-price", "5",
        "--total", "20", "--limit", "2", "--starts-at", "now-1m", "--ends-at", "2036-01-01T00:00:00Z",
        "--ttl", "300",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mug = engine.get_sale("SKU-MUG")
    assert (mug.name, mug.price_cents, mug.flash_price_cents, mug.total, mug.available) == (
        "Flash mug", 1200, 500, 20, 20,
    )  # fmt: skip
    assert (mug.per_user_limit, mug.reservation_ttl_ms, mug.ends_at, mug.paused) == (
        2, 300_000, 2082758400000, False,
    )  # fmt: skip
    assert abs(mug.starts_at - (redis_ms(engine) - 60_000)) < 10_000
    rows = {
        cells[0]: cells[1]
        for line in result.output.splitlines()
        if len(cells := [cell.strip() for cell in line.split("│") if cell.strip()]) == 2
    }
    assert rows["name"] == "Flash mug"
    assert (rows["price"], rows["flash price"], rows["total"], rows["per-user limit"]) == (
        "12.00", "5.00", "20", "2",
    )  # fmt: skip
    assert (rows["ends at"], rows["hold lasts"], rows["window"]) == ("2036-01-01T00:00:00Z", "300s", "live")
    assert engine.reserve("SKU-MUG", "ann", quantity=2).status == "RESERVED"


def test_put_changes_only_the_settings_given(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    engine.reserve("SKU-CAM-1", "ann", quantity=2)
    before = engine.get_sale("SKU-CAM-1")
    result = cli(env, "sale", "put", "SKU-CAM-1", "--limit", "5", "--stock", "40")
    assert result.exit_code == 0, result.output
    after = engine.get_sale("SKU-CAM-1")
    assert (after.per_user_limit, after.total, after.available, after.reserved) == (5, 40, 38, 2)
    unchanged = ("name", "price_cents", "flash_price_cents", "starts_at", "ends_at", "reservation_ttl_ms")
    assert [getattr(after, f) for f in unchanged] == [getattr(before, f) for f in unchanged]
    assert engine.get_sale("SKU-LENS-2").total == 12


def test_put_pauses_resumes_and_clears_a_bound(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    assert cli(env, "sale", "put", "SKU-CAM-1", "--pause").exit_code == 0
    assert engine.get_sale("SKU-CAM-1").paused is True
    with pytest.raises(SaleNotActive):
        engine.reserve("SKU-CAM-1", "ann")
    assert cli(env, "sale", "put", "SKU-CAM-1", "--resume").exit_code == 0
    assert engine.reserve("SKU-CAM-1", "ann").status == "RESERVED"
    assert cli(env, "sale", "put", "SKU-LENS-2", "--starts-at", "").exit_code == 0  # "" = no bound
    assert engine.get_sale("SKU-LENS-2").starts_at == 0
    assert engine.reserve("SKU-LENS-2", "ann").status == "RESERVED"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--limit", "0"], "sku 'SKU-CAM-1': per_user_limit must be at least 1, not 0"),
        (["--price", "12.345"], "price '12.345' must be a non-negative amount with at most 2 decimals"),
        (["--total", "lots"], "total 'lots' is not an integer"),
        (["--total", "2000000000"], "total must be at most 1000000000"),
        (["--total", "5"], "sku 'SKU-CAM-1': stock 5 is below the 6 units already reserved or sold"),
        (["--ttl", "0"], "reservation_ttl_s must be at least 1, not 0"),
        (["--starts-at", "tomorrow"], "starts_at 'tomorrow' is not ISO 8601"),
        (["--ends-at", "now-2m"], "ends_at must be after starts_at (its starts_at stays"),
        (["--name", "x" * 201], "name must be 1-200 bytes"),
    ],
)
def test_put_refuses_what_a_sale_file_would_and_changes_nothing(
    engine: Engine, redis_url: str, tmp_path: Path, options: list[str], message: str
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    for user in ("u1", "u2", "u3"):
        engine.reserve("SKU-CAM-1", user, quantity=2)
    before = engine.get_sale("SKU-CAM-1")
    result = cli(env, "sale", "put", "SKU-CAM-1", *options)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert engine.get_sale("SKU-CAM-1") == before


def test_put_of_a_new_sku_needs_its_total_and_a_valid_id(engine: Engine, redis_url: str) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    result = cli(env, "sale", "put", "SKU-NEW", "--limit", "2")
    assert result.exit_code == 1
    assert "sku 'SKU-NEW' is new: give its stock" in result.output
    result = cli(env, "sale", "put", "no spaces", "--total", "2")
    assert result.exit_code == 1
    assert "sku must be 1-128 letters, digits or -_.@" in result.output
    assert engine.list_sales() == []


def test_put_with_nothing_to_change_is_a_usage_error(redis_url: str) -> None:
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "put", "SKU-CAM-1")
    assert result.exit_code == 2
    assert "nothing to change" in result.output


def test_put_json_is_one_document_with_the_sale(engine: Engine, redis_url: str) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    result = cli(env, "sale", "put", "SKU-MUG", "--total", "20", "--flash-price", "4.50", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"sale", "postgres"}
    assert set(document["sale"]) == SALE_KEYS
    assert (document["sale"]["sku"], document["sale"]["total"], document["sale"]["flash_price_cents"]) == (
        "SKU-MUG", 20, 450,
    )  # fmt: skip
    assert document["sale"]["updated_at"] == engine.get_sale("SKU-MUG").updated_at
    assert document["postgres"] == "unchecked"


def test_put_waits_until_postgresql_has_every_changed_setting(
    engine: Engine, redis_url: str, database_url: str, drain: Drain
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    assert cli(env, "sale", "put", "SKU-MUG", "--total", "20", "--wait", "0").exit_code == 0
    assert drain(engine, database_url) == 1
    # Only the limit changes: name, price and total in PostgreSQL already match, so only a comparison of
    # every setting waits for the worker.
    worker = threading.Timer(1.0, lambda: drain(engine, database_url))
    worker.start()
    started = time.monotonic()
    result = cli(env, "sale", "put", "SKU-MUG", "--limit", "3", "--ends-at", "now+1h", "--wait", "20")
    waited = time.monotonic() - started  # before join(), which itself waits for the "worker"
    worker.join()
    assert result.exit_code == 0, result.output
    assert waited >= 1.0
    assert "PostgreSQL has it" in result.output
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT per_user_limit, ends_at IS NOT NULL FROM products").fetchone()
    assert row == (3, True)


def test_put_without_a_running_worker_says_so(redis_url: str, database_url: str) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": database_url}
    result = cli(env, "sale", "put", "SKU-MUG", "--total", "3", "--wait", "0.5", "--json")
    assert result.exit_code == 1
    assert "PostgreSQL still lacks SKU-MUG: is `flashsale worker` running?" in result.output


def test_a_waiting_room_from_a_sale_file_and_sale_put_shows_in_sale_status(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url}
    document = {"skus": [{"sku": "SKU-DROP", "stock": 5, "starts_at": "now-1m",
                          "waiting_room": {"admit_per_s": 40, "admission_s": 90}}]}  # fmt: skip
    assert cli(env, "sale", "load", str(write_json(tmp_path, document))).exit_code == 0
    room = engine.get_sale("SKU-DROP").waiting_room
    assert room is not None
    assert (room.on, room.admit_per_s, room.admission_ttl_ms) == (True, 40, 90_000)
    engine.join_queue("SKU-DROP", "alice")
    engine.join_queue("SKU-DROP", "bob")
    status = json.loads(cli(env, "sale", "status", "--json").output)["sales"][0]
    assert status["queue"]["line"] == 2
    assert status["queue"]["admit_per_s"] == 40
    assert "2 in line, 0 admitted (40/s)" in cli(env, "sale", "status").output

    put = cli(
        env, "sale", "put", "SKU-DROP", "--waiting-room", "7", "--waiting-room-stock-factor", "2", "--json"
    )
    assert json.loads(put.output)["sale"]["waiting_room"]["admit_per_s"] == 7
    assert engine.get_sale("SKU-DROP").waiting_room.stock_factor == 2  # type: ignore[union-attr]
    refused = cli(env, "sale", "put", "SKU-DROP", "--waiting-room", "0")
    assert refused.exit_code != 0
    assert "admit_per_s" in refused.output
    assert engine.get_sale("SKU-DROP").waiting_room.admit_per_s == 7  # type: ignore[union-attr]
    assert cli(env, "sale", "put", "SKU-DROP", "--no-waiting-room").exit_code == 0
    assert json.loads(cli(env, "sale", "status", "--json").output)["sales"][0]["queue"] is None


@pytest.mark.cluster
def test_put_splits_a_new_sku_into_buckets_and_status_lists_them(
    engine: Engine, redis_env: dict[str, str], on_cluster: bool
) -> None:
    env = redis_env
    put = cli(env, "sale", "put", "SKU-HOT", "--total", "40", "--buckets", "4", "--json", "--wait", "0")
    assert put.exit_code == 0, put.output
    assert (json.loads(put.output)["sale"]["buckets"], json.loads(put.output)["sale"]["available"]) == (4, 40)
    changed = cli(env, "sale", "put", "SKU-HOT", "--buckets", "2")
    assert changed.exit_code != 0
    assert "buckets is fixed" in changed.output
    engine.reserve("SKU-HOT", "ann")
    document = json.loads(cli(env, "sale", "status", "--json").output)
    (row,) = document["sales"]
    assert (row["total"], row["available"], row["reserved"], row["holds"], row["moving"]) == (40, 39, 1, 1, 0)
    assert [b["bucket"] for b in row["bucket_detail"]] == [0, 1, 2, 3]
    assert [b["partition"] for b in row["bucket_detail"]] == [
        engine.keys.for_bucket("SKU-HOT", b).index for b in range(4)
    ]
    assert sum(b["available"] for b in row["bucket_detail"]) == 39
    nodes = {n.name for n in partition_nodes(engine.redis, engine.keys)}
    assert {b["node"] for b in row["bucket_detail"]} <= nodes
    table = cli(env, "sale", "status")
    assert "SKU-HOT (4 buckets)" in table.output
    assert "stock buckets" in table.output


# -- FLASHSALE_REDIS_URL naming several nodes of a cluster -------------------------------------------------


def test_a_cluster_is_found_through_any_named_node_and_no_password_is_printed(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    down = f"127.0.0.1:{free_port()}"  # a node that is down: nothing listens there
    env = {"FLASHSALE_REDIS_URL": f"redis://{down},{redis_cluster.url}", "FLASHSALE_REDIS_CLUSTER": "1"}
    sale = {"skus": [{"sku": "SKU-NODES-1", "name": "Startup nodes", "price_cents": 100, "stock": 7}]}
    loaded = cli(env, "sale", "load", str(write_json(tmp_path, sale)))
    assert loaded.exit_code == 0, loaded.output
    status = cli(env, "sale", "status", "--json")
    assert status.exit_code == 0, status.output
    document = json.loads(status.output)
    row = next(s for s in document["sales"] if s["sku"] == "SKU-NODES-1")
    assert (row["total"], row["available"]) == (7, 7)
    assert len(document["nodes"]) == len(redis_cluster.masters)
    assert document["unreadable_nodes"] == []
    # Only the node that is down: a clear error, its password not printed.
    alone = cli({**env, "FLASHSALE_REDIS_URL": f"redis://:hunter2@{down}"}, "sale", "status")
    assert alone.exit_code == 1
    assert f"cannot reach Redis at redis://:***@{down}" in alone.output
    assert "hunter2" not in alone.output
    # Several nodes for one Redis: refused before anything is read.
    several = cli({**env, "FLASHSALE_REDIS_CLUSTER": "0"}, "sale", "status")
    assert several.exit_code == 1
    assert "only a Redis Cluster takes" in several.output
