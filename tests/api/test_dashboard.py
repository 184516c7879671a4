"""ops/grafana/flashsale.json against the running API: every metric, label and label value its queries
(and its SKU variable) name is one a live /metrics exports, so a renamed metric cannot silently empty a
panel. The queries' shape is checked offline in tests/unit/test_promql.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from flashsale.engine import Engine, Sale
from flashsale.engine.models import WaitingRoom
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ApiServer
from tests.api.test_orders import checkout
from tests.api.test_reservations import reserve
from tests.promql import Query, label_values, legend_labels, parse

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "flashsale.json"

Exported = dict[str, list[dict[str, str]]]


def exported_series(http: httpx.Client) -> Exported:
    exported: Exported = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(sample.labels)
    return exported


def unexported(query: Query, exported: Exported) -> list[str]:
    """What ``query`` names that the API does not export: metrics, labels, label values."""
    problems = []
    for selector in query.selectors:
        series = exported.get(selector.metric)
        if not series:
            problems.append(f"{selector.metric} is not exported")
            continue
        for matcher in selector.matchers:
            if not all(matcher.label in labels for labels in series):
                problems.append(f"{selector.metric} has no label {matcher.label}")
            elif matcher.op == "=" and not matcher.templated:
                if not any(labels[matcher.label] == matcher.value for labels in series):
                    problems.append(f"{selector.metric} has no series with {matcher.label}={matcher.value!r}")
            else:  # a pattern may match nothing yet (no 5xx so far): it must at least compile
                matcher.pattern()
    series_labels = {
        label for s in query.selectors for labels in exported.get(s.metric, []) for label in labels
    }
    problems += [f"grouped by unknown label {label}" for label in sorted(query.grouping - series_labels)]
    return problems


def test_every_metric_and_label_the_dashboard_queries_is_exported_by_the_api(
    api: ApiServer, http: httpx.Client, engine: Engine, load_sale: Callable[..., Sale]
) -> None:
    load_sale(total=2)
    load_sale(sku="SKU-ROOM", total=2)  # a waiting room's sale, so its queue metrics are exported too
    engine.set_waiting_room("SKU-ROOM", WaitingRoom(admit_per_s=100))
    rid = reserve(http, api, "alice").json()["id"]
    checkout(http, api, "alice", rid)
    reserve(http, api, "alice")  # refused: the per-user limit, so a refusal's outcome is exported too
    exported = exported_series(http)
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())

    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            query = parse(target["expr"])
            assert unexported(query, exported) == [], f"{panel['title']}: {target['expr']}"
            shown = legend_labels(target.get("legendFormat", ""))
            kept = query.grouping or {label for s in query.selectors for series in exported[s.metric]
                                      for label in series}  # fmt: skip
            assert shown <= kept, f"{panel['title']}: the legend shows {shown - kept}, which the query drops"
            checked += 1
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query, label = label_values(variable["query"]["query"])
            assert unexported(query, exported) == []
            assert all(label in series for s in query.selectors for series in exported[s.metric])
    assert checked >= 15


def test_the_check_reports_a_renamed_metric_a_missing_label_and_an_unknown_value(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale]
) -> None:
    load_sale(total=1)
    exported = exported_series(http)
    assert unexported(parse('sum(flashsale_stock_units{state="available"})'), exported) == []
    assert unexported(parse("sum(flashsale_stock_unit)"), exported) == [
        "flashsale_stock_unit is not exported"
    ]
    assert unexported(parse('flashsale_stock_units{colour="red"}'), exported) == [
        "flashsale_stock_units has no label colour"
    ]
    assert unexported(parse('flashsale_stock_units{state="gone"}'), exported) == [
        "flashsale_stock_units has no series with state='gone'"
    ]
    assert unexported(parse("sum by (zone) (flashsale_redis_up)"), exported) == [
        "grouped by unknown label zone"
    ]
