"""Health, readiness, Prometheus metrics and the OpenAPI document of a running API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest
from flashsale.api.openapi import build
from flashsale.api.routes import ENDPOINTS
from flashsale.api.schemas import (
    CheckoutRequest,
    ErrorBody,
    OrderBody,
    Product,
    ReservationBody,
    ReservationRequest,
)
from flashsale.engine import Engine, Sale
from prometheus_client.parser import text_string_to_metric_families

from flashsale.launcher import KafkaBroker, PostgresServer, free_port
from tests.api.conftest import SKU, ApiServer
from tests.api.test_orders import checkout
from tests.api.test_reservations import V1, reserve


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    with KafkaBroker() as broker:
        yield broker


def test_alive_and_ready_report_each_server_and_only_redis_decides_readiness(
    start_server: Callable[..., ApiServer], postgres: PostgresServer, kafka: KafkaBroker
) -> None:
    unconfigured = start_server()
    with unconfigured.client() as http:
        assert http.get("/health").json() == {"status": "UP"}
        ready = http.get("/health/ready")
        assert ready.status_code == 200
        components = ready.json()["components"]
        assert ready.json()["status"] == "UP"
        assert components["redis"]["status"] == "UP"
        assert components["postgresql"]["status"] == components["kafka"]["status"] == "NOT_CONFIGURED"
        assert "not configured" in components["kafka"]["detail"]

    configured = start_server(database_url=postgres.url, kafka_bootstrap=kafka.bootstrap)
    with configured.client() as http:
        ready = http.get("/health/ready")
        assert ready.status_code == 200
        assert {name: c["status"] for name, c in ready.json()["components"].items()} == {
            "redis": "UP",
            "postgresql": "UP",
            "kafka": "UP",
        }

    dead = f"127.0.0.1:{free_port()}"
    unreachable = start_server(database_url=f"postgresql://postgres@{dead}/flashsale", kafka_bootstrap=dead)
    with unreachable.client() as http:
        ready = http.get("/health/ready")
        assert ready.status_code == 200  # the API still serves: Redis is up
        statuses = {name: c["status"] for name, c in ready.json()["components"].items()}
        assert statuses == {"redis": "UP", "postgresql": "DOWN", "kafka": "DOWN"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_by_route_template_outcomes_stock_and_write_behind_lag(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=1)
    rid = reserve(http, api, "alice").json()["id"]
    reserve(http, api, "bob")  # OUT_OF_STOCK
    http.get(f"{V1}/reservations/{rid}", headers=api.auth("alice"))
    checkout(http, api, "alice", rid, "TEST_DECLINE")
    checkout(http, api, "alice", rid)
    http.get(f"{V1}/no/such/path/{rid}")

    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    histogram = "flashsale_http_request_duration_seconds_count"
    assert value(histogram, method="POST", route=f"{V1}/reservations", status="201") == 1
    assert value(histogram, method="POST", route=f"{V1}/reservations", status="400") == 1
    assert value(histogram, method="GET", route=f"{V1}/reservations/{{reservationId}}", status="200") == 1
    # Paths outside the API fall to the storefront's mount: one series, not one per URL tried.
    assert value(histogram, method="GET", route="/", status="404") == 1
    assert not any(rid in labels_value for (_, labels) in samples for _, labels_value in labels)

    assert value("flashsale_reservations_total", outcome="created") == 1
    assert value("flashsale_reservations_total", outcome="OUT_OF_STOCK") == 1
    assert value("flashsale_checkouts_total", outcome="declined") == 1
    assert value("flashsale_checkouts_total", outcome="confirmed") == 1

    assert value("flashsale_redis_up") == 1
    sale = engine.get_sale(SKU)
    for state in ("available", "reserved", "sold", "total"):
        assert value("flashsale_stock_units", sku=SKU, state=state) == getattr(sale, state)
    assert (sale.sold, sale.available) == (1, 0)

    # No write-behind worker runs here: every event of the SKU's partition is still pending.
    partition = engine.keys.for_sku(SKU)
    events = len(engine.read_events(partition.index))
    assert events >= 3
    assert value("flashsale_writeback_lag_events", partition=str(partition.index)) == events
    assert value("flashsale_writeback_lag_seconds", partition=str(partition.index)) >= 0
    assert (
        sum(1 for name, _ in samples if name == "flashsale_writeback_lag_events") == engine.config.partitions
    )


async def test_metrics_show_how_many_reserves_each_coalesced_call_carried(
    api: ApiServer, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    """Many shoppers at once on one SKU: the API's engine sends their reserves to Redis in reserve_many
    calls, and /metrics says how many calls and how many reserves in them (engine/coalescing.py)."""
    load_sale(total=50)
    shoppers = [f"crowd-{n}" for n in range(200)]
    limits = httpx.Limits(max_connections=len(shoppers))
    async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{V1}/reservations", json={"skuId": SKU, "quantity": 1}, headers=api.auth(user))
                for user in shoppers
            )
        )
        metrics = await client.get("/metrics")
    assert sorted(a.status_code for a in answers) == [201] * 50 + [400] * 150
    assert engine.get_sale(SKU).reserved == 50

    samples = _samples(metrics.text)
    calls = samples[("flashsale_coalesced_reserves_count", ())]
    carried = samples[("flashsale_coalesced_reserves_sum", ())]
    assert calls >= 1
    assert 2 * calls <= carried <= len(shoppers)
    assert samples[("flashsale_coalesced_passed_on_total", ())] == 0


def test_the_openapi_document_is_generated_from_the_structs_and_describes_real_answers(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale]
) -> None:
    document = http.get("/openapi.json").json()
    assert document == msgspec.json.decode(msgspec.json.encode(build(ENDPOINTS)))
    assert document["openapi"].startswith("3.1")
    for endpoint in ENDPOINTS:
        assert endpoint.method.lower() in document["paths"][endpoint.path]
    types = [ErrorBody, Product, ReservationBody, OrderBody, ReservationRequest, CheckoutRequest]
    _, expected = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    for name, schema in expected.items():
        assert document["components"]["schemas"][name] == schema
    assert document["components"]["schemas"]["ReservationRequest"]["additionalProperties"] is False

    def validates(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    load_sale()
    validates(http.get(f"{V1}/products/{SKU}").json(), "Product")
    reservation = reserve(http, api, "alice").json()
    validates(reservation, "ReservationBody")
    validates(checkout(http, api, "alice", reservation["id"]).json(), "OrderBody")
    validates(reserve(http, api, "alice").json(), "ErrorBody")
    with pytest.raises(jsonschema.ValidationError):
        validates({"skuId": SKU, "quantity": 1, "price": "0.01"}, "ReservationRequest")
