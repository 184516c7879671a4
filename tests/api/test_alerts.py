"""ops/prometheus/alerts.yml: well-formed rules whose every metric, label and label value is one the
running API actually exports (a renamed metric would silently disable an alert)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from flashsale.engine import Sale
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ApiServer
from tests.api.test_orders import checkout
from tests.api.test_reservations import V1, reserve

ALERTS = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "alerts.yml"
DESIGN_DOC_ALERTS = {"FlashsaleHighErrorRate", "FlashsaleHighLatency", "FlashsaleLowInventory"}

_SELECTOR = re.compile(r"\b(flashsale_[a-z_]+)\b(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_DURATION = re.compile(r"^\d+[smhd]$")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alert_rules_are_well_formed_and_include_the_design_documents_alerts() -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} >= DESIGN_DOC_ALERTS
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert _DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert expr.count("{") == expr.count("}"), rule["alert"]
        assert _SELECTOR.search(expr), f"{rule['alert']} names no flashsale metric"


def test_every_metric_and_label_the_alerts_use_is_exported_by_the_api(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale]
) -> None:
    load_sale(total=1)
    rid = reserve(http, api, "alice").json()["id"]
    checkout(http, api, "alice", rid)
    load_sale("SKU-ROOM", total=5)  # a waiting room's series
    room = {"admitPerSecond": 5}
    admin = api.auth("ops", admin=True)
    assert http.put(f"{V1}/admin/sales/SKU-ROOM/waiting-room", json=room, headers=admin).status_code == 200
    exported: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(sample.labels)

    for rule in _rules():
        expr = rule["expr"]
        used_labels: set[str] = set()
        for name, matchers in _SELECTOR.findall(expr):
            assert name in exported, f"{rule['alert']}: {name} is not exported"
            labels = exported[name]
            for label, op, wanted in _MATCHER.findall(matchers):
                used_labels.add(label)
                assert all(label in series for series in labels), (
                    f"{rule['alert']}: {name} has no label {label}"
                )
                if op == "=":
                    assert any(series[label] == wanted for series in labels), (
                        f"{rule['alert']}: {label}={wanted}"
                    )
                else:  # a pattern may match nothing yet (no 5xx so far): it must at least compile
                    re.compile(wanted)
        grouped = {
            label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()
        }
        series_labels = {label for name, _ in _SELECTOR.findall(expr) for s in exported[name] for label in s}
        assert grouped <= series_labels, (
            f"{rule['alert']}: groups by unknown labels {grouped - series_labels}"
        )
        for label in re.findall(r"\$labels\.(\w+)", str(rule["annotations"])):
            assert label in grouped | used_labels | series_labels, f"{rule['alert']}: $labels.{label}"
    assert any(
        s["route"] == f"{V1}/reservations" for s in exported["flashsale_http_request_duration_seconds_bucket"]
    )
