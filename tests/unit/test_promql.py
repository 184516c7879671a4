"""The PromQL reader (tests/promql.py) that the dashboard and alert checks rely on, and the dashboard's and
the alert rules' queries read offline: well formed, only known functions, only flashsale metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import (
    AGGREGATIONS,
    Matcher,
    PromQLError,
    Selector,
    label_values,
    legend_labels,
    parse,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "flashsale.json"
PROVISIONING = ROOT / "ops" / "grafana" / "dashboards.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


# -- the reader --------------------------------------------------------------------------------------------
def test_a_selector_with_matchers_inside_functions_and_a_grouping() -> None:
    query = parse(
        'histogram_quantile(0.99, sum by (le, route) (rate(http_seconds_bucket{route=~"/api/v1/.*", '
        'method!="GET"}[5m])))'
    )
    assert query.selectors == [
        Selector(
            "http_seconds_bucket", (Matcher("route", "=~", "/api/v1/.*"), Matcher("method", "!=", "GET"))
        )
    ]
    assert query.grouping == {"le", "route"}
    assert query.functions == {"histogram_quantile", "sum", "rate"}


def test_binary_operators_comparisons_and_grouping_after_the_aggregation() -> None:
    query = parse("sum(a_total{x='1'}) by (sku) / on (sku) group_left (state) b > bool 0.5 and c offset 5m")
    assert query.metrics == {"a_total", "b", "c"}
    assert query.grouping == {"sku", "state"}
    assert query.selectors[0].matchers == (Matcher("x", "=", "1"),)


def test_grafana_variables_in_label_values_and_ranges() -> None:
    query = parse('sum by (sku) (rate(x_total{sku=~"$sku", zone="${zone}"}[$__rate_interval]))')
    assert query.variables == {"sku", "zone", "__rate_interval"}
    matcher = query.selectors[0].matchers[0]
    assert matcher.templated
    assert matcher.pattern().fullmatch("SKU-1")


def test_a_name_selector_and_escaped_quotes() -> None:
    query = parse(r'{__name__="up", job="a\"b"}')
    assert query.selectors == [Selector("up", (Matcher("job", "=", 'a"b'),))]


def test_an_aggregation_grouped_before_its_argument_is_not_a_metric() -> None:
    assert parse("max by (partition) (lag_seconds) > 60").metrics == {"lag_seconds"}
    assert parse("sum without (instance) (x)").grouping == {"instance"}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("sum(rate(x[5m])", r"unbalanced \("),
        ("sum(x))", r"unbalanced \)"),
        ("sumx(x)", r"unknown function sumx\(\)"),
        ("rate(x[five])", r"bad range \[five\]"),
        ('x{sku~"a"}', r"cannot read the label matchers"),
        ("sum by (1) (x)", r"must list label names"),
        ("sum by x", r"by needs a label list"),
        ("1 + 2", r"no metric"),
        ("x # y", r"unexpected"),
    ],
)
def test_what_the_reader_refuses(expr: str, message: str) -> None:
    with pytest.raises(PromQLError, match=message):
        parse(expr)


def test_label_values_and_legends() -> None:
    query, label = label_values("label_values(flashsale_stock_units{state='total'}, sku)")
    assert (query.metrics, label) == ({"flashsale_stock_units"}, "sku")
    with pytest.raises(PromQLError, match="is not label_values"):
        label_values("label_values(sku)")
    assert legend_labels("{{sku}} {{ state }} units") == {"sku", "state"}


# -- the dashboard, offline --------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def queried_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_variable() -> None:
    document = dashboard()
    assert {"uid", "title", "panels", "templating", "schemaVersion", "time"} <= set(document)
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    query, label = label_values(variables["sku"]["query"]["query"])
    assert (query.metrics, label) == ({"flashsale_stock_units"}, "sku")


def test_panels_have_unique_ids_and_do_not_overlap_on_the_24_column_grid() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_what_an_operator_watches_is_on_the_dashboard() -> None:
    metrics = {
        metric for panel in queried_panels() for t in panel["targets"] for metric in parse(t["expr"]).metrics
    }
    assert metrics >= {
        "flashsale_http_request_duration_seconds_count",  # requests by status
        "flashsale_http_request_duration_seconds_bucket",  # p99 by route
        "flashsale_reservations_total",  # refusals by code
        "flashsale_stock_units",  # stock per SKU
        "flashsale_writeback_lag_seconds",  # write-behind lag
        "flashsale_redis_up",  # Redis up
    }


@pytest.mark.parametrize("panel", queried_panels(), ids=lambda panel: panel["title"])
def test_every_panel_query_reads_and_uses_the_prometheus_variable(panel: dict[str, Any]) -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]} | BUILTIN_VARIABLES
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"], "a panel without a query"
    assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for target in panel["targets"]:
        assert target["datasource"] == panel["datasource"]
        query = parse(target["expr"])
        assert all(metric.startswith("flashsale_") for metric in query.metrics), target["expr"]
        assert query.variables <= variables, target["expr"]
        for window in re.findall(r"\[([^\]]*)\]", target["expr"]):
            assert window == "$__rate_interval", f"{panel['title']}: a fixed window [{window}]"
        if query.functions & AGGREGATIONS:  # aggregated: a legend can only show the labels kept
            assert legend_labels(target.get("legendFormat", "")) <= query.grouping, panel["title"]


def test_the_provisioning_file_points_grafana_at_the_dashboard_folder() -> None:
    document = yaml.safe_load(PROVISIONING.read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert "flashsale.json" in PROVISIONING.read_text()


# -- the alert rules, offline ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule",
    [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]],
    ids=lambda rule: rule["alert"],
)
def test_every_alert_expression_reads_and_names_only_flashsale_metrics(rule: dict[str, Any]) -> None:
    query = parse(rule["expr"])
    assert query.metrics
    assert all(metric.startswith("flashsale_") for metric in query.metrics), rule["expr"]
    assert not query.variables, "Grafana variables mean nothing to Prometheus"
