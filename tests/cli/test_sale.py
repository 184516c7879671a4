"""`flashsale sale load` and `flashsale sale status` against real Redis and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from flashsale.engine import Engine

from flashsale.cli import main

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


def redis_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_load_json_puts_every_sku_on_sale_with_prices_limits_and_window(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    result = cli({"FLASHSALE_REDIS_URL": redis_url}, "sale", "load", str(write_json(tmp_path, SALE)))
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
    worker.join()
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.0
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


def test_status_shows_counters_holds_and_write_behind_lag(
    engine: Engine, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    env = {"FLASHSALE_REDIS_URL": redis_url, "COLUMNS": "200"}
    assert cli(env, "sale", "load", str(write_json(tmp_path, SALE))).exit_code == 0
    engine.reserve("SKU-CAM-1", "ann", quantity=2)
    hold = engine.reserve("SKU-CAM-1", "bob")
    engine.confirm(engine.begin_checkout(hold.id, "bob", "CREDIT_CARD").id, "bob")
    result = cli(env, "sale", "status")
    assert result.exit_code == 0, result.output
    camera = next(line for line in result.output.splitlines() if "SKU-CAM-1" in line)
    cells = [cell.strip() for cell in camera.split("│") if cell.strip()]
    # SKU, name, price, window, total, available, reserved, sold, holds, lag
    assert cells[3:9] == ["live", "30", "27", "2", "1", "1"]
    assert cells[9].startswith("5 events")  # sale_loaded, reserved, reserved, checkout_started, confirmed
    lens = next(line for line in result.output.splitlines() if "SKU-LENS-2" in line)
    assert "starts in" in lens
