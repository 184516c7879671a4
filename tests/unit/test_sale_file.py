"""Sale files (flashsale.sales) without a server: reading JSON and CSV, every field's rules, every refusal.

The Redis-side checks (``check_against_live``, ``load_sales``) run against a stand-in that answers
``get_sale`` and records ``load_sale``; tests/cli/test_sale.py loads real files into a real Redis.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
from flashsale.engine import Engine
from flashsale.engine.errors import NotFound
from flashsale.engine.models import Sale, SaleSettings
from flashsale.engine.scripts import assemble

from flashsale.sales import (
    LIMITS,
    MINIMUM,
    SaleFileError,
    check_against_live,
    iso_utc,
    load_sales,
    read_sale_file,
    sale_settings,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z, the "Redis clock" of these tests
MINUTE = 60_000


def settings(**record: Any) -> SaleSettings:
    return sale_settings({"sku": "SKU-1", **record}, NOW)


def refusal(record: dict[str, Any]) -> str:
    with pytest.raises(SaleFileError) as raised:
        sale_settings(record, NOW)
    return str(raised.value)


def live_sale(sku: str = "SKU-1", **fields: Any) -> Sale:
    values: dict[str, Any] = {
        "sku": sku, "name": sku, "price_cents": 1000, "flash_price_cents": 500, "total": 10,
        "available": 10, "reserved": 0, "sold": 0, "per_user_limit": 1, "starts_at": 0, "ends_at": 0,
        "reservation_ttl_ms": 600_000, "paused": False, "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    return Sale(**{**values, **fields})


class StandInEngine:
    """What flashsale.sales asks of the engine: Redis's clock, get_sale, load_sale (recorded)."""

    def __init__(self, *sales: Sale) -> None:
        self.sales = {sale.sku: sale for sale in sales}
        self.loaded: list[SaleSettings] = []
        self.redis = self

    def time(self) -> tuple[int, int]:
        return NOW // 1000, (NOW % 1000) * 1000

    def get_sale(self, sku: str) -> Sale:
        if sku not in self.sales:
            raise NotFound(f"no sale for sku {sku!r}")
        return self.sales[sku]

    def load_sale(self, given: SaleSettings, *, buckets: int | None = None) -> Sale:
        self.loaded.append(given)
        return live_sale(given.sku, total=given.total or 0)

    @property
    def engine(self) -> Engine:
        return cast(Engine, self)


# -- reading files -----------------------------------------------------------------------------------------
def test_a_json_list_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "sale.json"
    path.write_text(json.dumps([{"sku": "A", "stock": 5}, {"sku": "B", "stock": "7"}]))
    assert read_sale_file(path) == [{"sku": "A", "stock": 5}, {"sku": "B", "stock": "7"}]


def test_json_defaults_apply_to_every_sku_and_a_sku_overrides_them(tmp_path: Path) -> None:
    path = tmp_path / "sale.json"
    document = {"defaults": {"per_user_limit": 2, "paused": True}, "skus": [{"sku": "A"}, {"sku": "B",
                "per_user_limit": 5}]}  # fmt: skip
    path.write_text(json.dumps(document))
    assert read_sale_file(path) == [
        {"sku": "A", "per_user_limit": 2, "paused": True},
        {"sku": "B", "per_user_limit": 5, "paused": True},
    ]


def test_csv_cells_are_trimmed_and_empty_cells_stay_empty(tmp_path: Path) -> None:
    path = tmp_path / "sale.CSV"
    path.write_text(" sku , name ,stock,starts_at\nSKU-1, Mug ,10,\nSKU-2,Cup,3,now+1h\n")
    assert read_sale_file(path) == [
        {"sku": "SKU-1", "name": "Mug", "stock": "10", "starts_at": ""},
        {"sku": "SKU-2", "name": "Cup", "stock": "3", "starts_at": "now+1h"},
    ]


def test_a_csv_from_a_spreadsheet_with_a_byte_order_mark_reads_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / "sale.csv"
    path.write_bytes("sku,stock\r\nSKU-1,10\r\n".encode("utf-8-sig"))
    assert read_sale_file(path) == [{"sku": "SKU-1", "stock": "10"}]


def test_a_csv_row_with_more_values_than_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sale.csv"
    path.write_text("sku,stock\nSKU-1,10\nSKU-2,5,oops\n")
    with pytest.raises(SaleFileError, match=r"sale.csv line 3: more values than the header has columns"):
        read_sale_file(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("sale.json", '[{"sku": "A",}]', r"sale.json is not valid JSON \(line 1: Expecting property"),
        ("sale.json", '{"sku": "A"}', r"sale.json: expected a list of SKU objects or \{'skus': \[...\]\}"),
        ("sale.json", '["A", "B"]', r"expected a list of SKU objects"),
        ("sale.json", '{"defaults": [1], "skus": []}', r"sale.json: 'defaults' must be an object"),
        ("sale.json", b"\xff\xfe[]", r"sale.json is not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_a_sale_file_is_refused_with_its_name(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(SaleFileError, match=message):
        read_sale_file(path)


def test_a_missing_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SaleFileError, match=r"cannot read .*nope.json: No such file or directory"):
        read_sale_file(tmp_path / "nope.json")


# -- fields ------------------------------------------------------------------------------------------------
def test_only_the_fields_given_are_set() -> None:
    assert settings(stock=10) == SaleSettings(sku="SKU-1", total=10)
    assert settings(name="Mug") == SaleSettings(sku="SKU-1", name="Mug")


def test_every_field_of_a_full_record() -> None:
    record = {"name": "Mug", "price": "12.00", "flash_price": "4.99", "stock": "20", "per_user_limit": "2",
              "starts_at": "2026-11-27T09:00:00Z", "ends_at": "1795773600000", "reservation_ttl_s": "90",
              "paused": "yes"}  # fmt: skip
    assert settings(**record) == SaleSettings(
        sku="SKU-1",
        name="Mug",
        price_cents=1200,
        flash_price_cents=499,
        total=20,
        per_user_limit=2,
        starts_at=1795770000000,
        ends_at=1795773600000,
        reservation_ttl_ms=90_000,
        paused=True,
    )


@pytest.mark.parametrize(
    ("amount", "cents"),
    [("129.99", 12999), ("0.1", 10), ("12", 1200), (12.5, 1250), (7, 700), (" 3.50 ", 350), ("0", 0),
     ("10000000.00", 10**9)],
)  # fmt: skip
def test_money_is_read_in_currency_units_into_cents(amount: object, cents: int) -> None:
    assert settings(price=amount).price_cents == cents
    assert settings(flash_price=amount).flash_price_cents == cents


def test_money_may_be_given_in_cents() -> None:
    assert settings(price_cents=12999, flash_price_cents="9999") == SaleSettings(
        sku="SKU-1", price_cents=12999, flash_price_cents=9999
    )


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("now", NOW),
        ("now+10m", NOW + 10 * MINUTE),
        ("now-1h", NOW - 60 * MINUTE),
        ("NOW + 2d", NOW + 2 * 24 * 60 * MINUTE),
        ("now+30s", NOW + 30_000),
        ("now+250ms", NOW + 250),
        ("2026-01-01T00:00:00Z", 1767225600000),
        ("2026-01-01T01:00:00+01:00", 1767225600000),
        ("2026-01-01T00:00:00.250Z", 1767225600250),
        ("1767225600000", 1767225600000),
        (1767225600000, 1767225600000),
        ("", 0),
        (None, 0),
    ],
)
def test_times_are_iso_8601_ms_since_the_epoch_or_relative_to_redis_now(value: object, instant: int) -> None:
    assert settings(starts_at=value).starts_at == instant
    assert settings(ends_at=value).ends_at == instant


def test_a_window_bound_left_out_is_kept_and_an_empty_one_is_cleared() -> None:
    assert settings(stock=1).starts_at is None
    assert settings(starts_at="").starts_at == 0


@pytest.mark.parametrize(
    ("value", "flag"),
    [("true", True), ("YES", True), (1, True), (True, True), ("false", False), ("no", False), ("0", False),
     (False, False)],
)  # fmt: skip
def test_paused_is_a_yes_or_no(value: object, flag: bool) -> None:
    assert settings(paused=value).paused is flag


def test_the_ttl_in_seconds_or_in_milliseconds() -> None:
    assert settings(reservation_ttl_s=90).reservation_ttl_ms == 90_000
    assert settings(reservation_ttl_ms="1500").reservation_ttl_ms == 1500


def test_total_is_the_other_name_of_stock() -> None:
    assert settings(total=5).total == 5


# -- refusals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"sku": "SKU-1", "colour": "red", "size": 2}, "sku 'SKU-1': unknown field(s) colour, size"),
        ({"sku": "SKU-1", "name": ["a"]}, "name must be a single value, not a list or an object"),
        ({"stock": 1}, "a SKU without 'sku': sku must be 1-128 letters, digits or -_.@"),
        ({"sku": "bad sku"}, "sku 'bad sku': sku must be 1-128 letters, digits or -_.@"),
        ({"sku": "x" * 129}, "sku must be 1-128 letters, digits or -_.@"),
        ({"sku": "SKU-1", "price": "1", "price_cents": 100}, "sku 'SKU-1': give price or price_cents, not"),
        ({"sku": "SKU-1", "flash_price": "1", "flash_price_cents": 1},
         "give flash_price or flash_price_cents, not both"),
        ({"sku": "SKU-1", "stock": 1, "total": 1}, "sku 'SKU-1': give stock or total, not both"),
        ({"sku": "SKU-1", "reservation_ttl_s": 1, "reservation_ttl_ms": 1000},
         "give reservation_ttl_s or reservation_ttl_ms, not both"),
        ({"sku": "SKU-1", "price": "12.345"}, "price '12.345' must be a non-negative amount with at most 2"),
        ({"sku": "SKU-1", "price": "-1"}, "price '-1' must be a non-negative amount with at most 2 decimals"),
        ({"sku": "SKU-1", "flash_price": "cheap"}, "flash_price 'cheap' is not an amount"),
        ({"sku": "SKU-1", "price": "Infinity"}, "price 'Infinity' is not an amount"),
        ({"sku": "SKU-1", "price": "NaN"}, "price 'NaN' is not an amount"),
        ({"sku": "SKU-1", "price": "10000000.01"}, "price '10000000.01' is more than 10000000.00"),
        ({"sku": "SKU-1", "price_cents": "12.5"}, "price_cents '12.5' is not an integer"),
        ({"sku": "SKU-1", "price_cents": 10**9 + 1}, "price_cents must be at most 1000000000"),
        ({"sku": "SKU-1", "stock": -1}, "sku 'SKU-1': stock must be at least 0, not -1"),
        ({"sku": "SKU-1", "total": 10**9 + 1}, "total must be at most 1000000000, not 1000000001"),
        ({"sku": "SKU-1", "stock": "ten"}, "stock 'ten' is not an integer"),
        ({"sku": "SKU-1", "stock": True}, "stock must be an integer, not True"),
        ({"sku": "SKU-1", "per_user_limit": 0}, "per_user_limit must be at least 1, not 0"),
        ({"sku": "SKU-1", "per_user_limit": 10**6 + 1}, "per_user_limit must be at most 1000000"),
        ({"sku": "SKU-1", "reservation_ttl_s": 0}, "reservation_ttl_s must be at least 1, not 0"),
        ({"sku": "SKU-1", "reservation_ttl_s": 10**7 + 1}, "reservation_ttl_s must be at most 10000000"),
        ({"sku": "SKU-1", "reservation_ttl_ms": 999}, "reservation_ttl_ms must be at least 1000, not 999"),
        ({"sku": "SKU-1", "starts_at": "tomorrow"},
         "starts_at 'tomorrow' is not ISO 8601, ms since the epoch or relative like 'now+10m'"),
        ({"sku": "SKU-1", "starts_at": "now+10 minutes"}, "starts_at 'now+10 minutes' is not ISO 8601"),
        ({"sku": "SKU-1", "ends_at": "²"}, "ends_at '²' is not ISO 8601"),
        ({"sku": "SKU-1", "starts_at": "2026-11-27T09:00:00"},
         "starts_at '2026-11-27T09:00:00' needs a time zone (e.g. a trailing Z for UTC)"),
        ({"sku": "SKU-1", "starts_at": "1969-12-31T00:00:00Z"}, "is outside 1970 to the year 5138"),
        ({"sku": "SKU-1", "starts_at": "now-100000d"}, "starts_at 'now-100000d' is outside 1970"),
        ({"sku": "SKU-1", "ends_at": str(10**14 + 1)}, "is outside 1970 to the year 5138"),
        ({"sku": "SKU-1", "starts_at": "now+1h", "ends_at": "now"},
         "sku 'SKU-1': ends_at must be after starts_at"),
        ({"sku": "SKU-1", "starts_at": "now", "ends_at": "now"}, "ends_at must be after starts_at"),
        ({"sku": "SKU-1", "name": "x" * 201}, "sku 'SKU-1': name must be 1-200 bytes"),
        ({"sku": "SKU-1", "name": "é" * 101}, "name must be 1-200 bytes"),
        ({"sku": "SKU-1", "paused": "maybe"}, "sku 'SKU-1': paused 'maybe' must be true or false"),
    ],
)  # fmt: skip
def test_each_refusal_names_the_sku_the_field_and_the_rule(record: dict[str, Any], message: str) -> None:
    assert message in refusal(record)


def test_the_bounds_are_the_load_sale_scripts_own() -> None:
    """A value the file accepts but the script refuses would leave a file half loaded: the script's
    ranges, read from the assembled script with its generated bounds, are the file's."""
    script = assemble("load_sale")
    constants = {
        name: int(value) for name, value in re.findall(r"^local (MAX_\w+|MIN_\w+) = (\d+)$", script, re.M)
    }
    ranges = re.search(r"local RANGES = \{(.*?)\n\}", script, re.S)
    assert ranges, "no RANGES table in load_sale.lua"
    found = {
        field: (
            int(low) if low.isdigit() else constants[low],
            int(high) if high.isdigit() else constants[high],
        )
        for field, low, high in re.findall(r"(\w+) = \{(\w+), (\w+)\}", ranges.group(1))
    }
    assert {field: high for field, (_, high) in found.items()} == LIMITS
    assert {field: low for field, (low, _) in found.items() if low} == MINIMUM


# -- against what Redis holds ------------------------------------------------------------------------------
def test_a_new_sku_needs_its_stock() -> None:
    with pytest.raises(SaleFileError, match=r"^sku 'SKU-1' is new: give its stock$"):
        check_against_live(StandInEngine().engine, [SaleSettings(sku="SKU-1", name="Mug")])


def test_an_existing_sku_may_change_one_field() -> None:
    check_against_live(StandInEngine(live_sale()).engine, [SaleSettings(sku="SKU-1", name="Mug")])


def test_a_sku_may_appear_once() -> None:
    twice = [SaleSettings(sku="SKU-1", total=1), SaleSettings(sku="SKU-1", total=2)]
    with pytest.raises(SaleFileError, match=r"^sku 'SKU-1' appears twice$"):
        check_against_live(StandInEngine().engine, twice)


def test_stock_cannot_shrink_below_what_is_reserved_or_sold() -> None:
    stand_in = StandInEngine(live_sale(total=10, available=4, reserved=4, sold=2))
    with pytest.raises(
        SaleFileError, match=r"^sku 'SKU-1': stock 5 is below the 6 units already reserved or sold$"
    ):
        check_against_live(stand_in.engine, [SaleSettings(sku="SKU-1", total=5)])
    check_against_live(stand_in.engine, [SaleSettings(sku="SKU-1", total=6)])


def test_one_bound_given_must_still_fit_the_bound_the_sale_keeps() -> None:
    stand_in = StandInEngine(live_sale(starts_at=NOW + 60 * MINUTE, ends_at=NOW + 120 * MINUTE))
    with pytest.raises(
        SaleFileError, match=r"ends_at must be after starts_at \(its starts_at stays 2026-09-21T15:13:20Z\)"
    ):
        check_against_live(stand_in.engine, [SaleSettings(sku="SKU-1", ends_at=NOW)])
    with pytest.raises(SaleFileError, match=r"\(its ends_at stays 2026-09-21T16:13:20Z\)"):
        check_against_live(stand_in.engine, [SaleSettings(sku="SKU-1", starts_at=NOW + 180 * MINUTE)])
    check_against_live(stand_in.engine, [SaleSettings(sku="SKU-1", starts_at=NOW + 180 * MINUTE, ends_at=0)])


def test_load_sales_checks_every_sku_before_loading_any() -> None:
    stand_in = StandInEngine()
    records = [{"sku": "A", "stock": 1}, {"sku": "B", "stock": 2}, {"sku": "C"}]
    with pytest.raises(SaleFileError, match=r"sku 'C' is new: give its stock"):
        load_sales(stand_in.engine, records)
    assert stand_in.loaded == []
    with pytest.raises(SaleFileError, match=r"sku 'B': stock 'two' is not an integer"):
        load_sales(stand_in.engine, [{"sku": "A", "stock": 1}, {"sku": "B", "stock": "two"}])
    assert stand_in.loaded == []


def test_load_sales_loads_each_sku_with_relative_times_from_redis_now() -> None:
    stand_in = StandInEngine()
    loaded = load_sales(
        stand_in.engine, [{"sku": "A", "stock": 1, "starts_at": "now+10m"}, {"sku": "B", "stock": 2}]
    )
    assert [sale.sku for sale in loaded] == ["A", "B"]
    assert stand_in.loaded == [
        SaleSettings(sku="A", total=1, starts_at=NOW + 10 * MINUTE),
        SaleSettings(sku="B", total=2),
    ]


def test_an_empty_sale_file_is_refused() -> None:
    with pytest.raises(SaleFileError, match=r"the sale file has no SKUs"):
        load_sales(StandInEngine().engine, [])


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "1970-01-01T00:00:00Z"), (1767225600000, "2026-01-01T00:00:00Z"),
     (1767225600250, "2026-01-01T00:00:00.250Z")],
)  # fmt: skip
def test_instants_are_shown_as_iso_8601_utc(ms: int, text: str) -> None:
    assert iso_utc(ms) == text
