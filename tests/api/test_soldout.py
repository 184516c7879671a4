"""Sold-out answers from memory through one real API server (api/soldout.py): once reserve refuses a SKU
as sold out, later refusals come without a Redis call, in the same error shape, counted in the metrics;
everything else is answered as before. Several worker processes: tests/api/test_soldout_serve.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from flashsale.api.context import Api
from flashsale.engine import Engine, Sale
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ApiServer

RESERVE = "/api/v1/reservations"


def evalsha_calls(store: redis.Redis) -> int:
    """Scripts Redis has run: every reserve that reached it is one."""
    stats: dict[str, Any] = store.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def app_of(server: ApiServer) -> Api:
    api: Api = server.server.config.app.state.api
    return api


def listening(server: ApiServer) -> ApiServer:
    """The server, once its process listens to the stock channels (until then it flags nothing)."""
    deadline = time.monotonic() + 10
    while not app_of(server).soldout.listening:
        assert time.monotonic() < deadline, "the stock channels were never subscribed"
        time.sleep(0.01)
    return server


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def reserve(
    http: httpx.Client, server: ApiServer, user: str, sku: str = "SOLD", quantity: int = 1, **headers: str
) -> httpx.Response:
    return http.post(
        RESERVE, json={"skuId": sku, "quantity": quantity}, headers={**server.auth(user), **headers}
    )


@pytest.fixture
def sold_out(load_sale: Callable[..., Sale], api: ApiServer, http: httpx.Client) -> str:
    """A SKU whose only unit alice holds; the server has been told it is sold out once."""
    listening(api)
    load_sale("SOLD", total=1, per_user_limit=5)
    assert reserve(http, api, "alice").status_code == 201
    assert reserve(http, api, "bob").status_code == 400
    return "SOLD"


def test_once_sold_out_refusals_are_answered_without_redis(
    sold_out: str, api: ApiServer, http: httpx.Client, store: redis.Redis
) -> None:
    refused_before = metric(http, "flashsale_reservations_total", outcome="OUT_OF_STOCK")
    timed_before = metric(
        http, "flashsale_http_request_duration_seconds_count", method="POST", route=RESERVE, status="400"
    )
    scripts_before = evalsha_calls(store)
    for n in range(50):
        response = reserve(http, api, f"shopper-{n}")
        assert response.status_code == 400
        assert response.json()["error"] == "OUT_OF_STOCK"
    assert evalsha_calls(store) == scripts_before  # not one reserve reached Redis
    assert metric(http, "flashsale_soldout_shortcircuit_total") == 50
    assert metric(http, "flashsale_reservations_total", outcome="OUT_OF_STOCK") == refused_before + 50
    timed = metric(
        http, "flashsale_http_request_duration_seconds_count", method="POST", route=RESERVE, status="400"
    )
    assert timed == timed_before + 50


def test_a_refusal_from_memory_has_the_one_error_shape(
    sold_out: str, api: ApiServer, http: httpx.Client
) -> None:
    response = reserve(http, api, "carol")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "status", "path", "timestamp"}
    assert body["error"] == "OUT_OF_STOCK"
    assert body["status"] == 400
    assert body["path"] == RESERVE
    assert body["message"] == "sku SOLD is sold out"
    assert body["timestamp"].endswith("Z")


def test_stock_coming_back_is_seen_at_once(
    sold_out: str, api: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    engine.restock(sold_out, 1)
    deadline = time.monotonic() + 1.0  # the TTL is 1 s: only the script's message can be this quick
    while (response := reserve(http, api, "dave")).status_code != 201:
        assert time.monotonic() < deadline, response.text
    assert reserve(http, api, "erin").status_code == 400


def test_requests_with_an_idempotency_key_always_ask_redis(
    load_sale: Callable[..., Sale], api: ApiServer, http: httpx.Client, store: redis.Redis
) -> None:
    listening(api)
    load_sale("SOLD", total=1)
    first = reserve(http, api, "alice", **{"Idempotency-Key": "click-1"})
    assert first.status_code == 201  # the last unit; say alice never saw this answer
    assert reserve(http, api, "bob").status_code == 400  # sold out, and flagged
    scripts = evalsha_calls(store)
    retry = reserve(http, api, "alice", **{"Idempotency-Key": "click-1"})
    assert retry.status_code == 201  # her retry gets her hold back, not "sold out"
    assert retry.json()["id"] == first.json()["id"]
    refused = reserve(http, api, "carol", **{"Idempotency-Key": "click-9"})
    assert refused.status_code == 400
    assert evalsha_calls(store) == scripts + 2


def test_a_quantity_is_refused_from_memory_only_above_the_units_left(
    load_sale: Callable[..., Sale], api: ApiServer, http: httpx.Client, store: redis.Redis
) -> None:
    listening(api)
    load_sale("SOLD", total=3, per_user_limit=5)
    assert reserve(http, api, "alice", quantity=2).status_code == 201
    assert reserve(http, api, "bob", quantity=2).status_code == 400  # 1 left: flagged "1 left"
    scripts = evalsha_calls(store)
    assert reserve(http, api, "carol", quantity=3).status_code == 400
    assert evalsha_calls(store) == scripts  # from memory
    assert reserve(http, api, "bob", quantity=1).status_code == 201  # the one unit: Redis was asked
    assert evalsha_calls(store) == scripts + 1


def test_bad_requests_for_a_sold_out_sku_get_the_answers_they_always_got(
    sold_out: str, api: ApiServer, http: httpx.Client
) -> None:
    body = {"skuId": sold_out}
    assert http.post(RESERVE, json=body).status_code == 401
    assert http.post(RESERVE, json=body, headers={"Authorization": "Bearer nonsense"}).status_code == 401
    headers = {**api.auth("mallory"), "Content-Type": "text/plain"}
    assert http.post(RESERVE, content=b'{"skuId": "SOLD"}', headers=headers).status_code == 415
    headers = {**api.auth("mallory"), "Content-Type": "application/json"}
    malformed = http.post(RESERVE, content=b'{"skuId": "SOLD", "quantity": 0}', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "VALIDATION_ERROR"
    unknown = http.post(RESERVE, content=b'{"skuId": "SOLD", "colour": "red"}', headers=headers)
    assert unknown.json()["error"] == "VALIDATION_ERROR"
    too_large = http.post(RESERVE, content=b'{"skuId": "SOLD"' + b" " * 20_000 + b"}", headers=headers)
    assert too_large.status_code == 413
    assert reserve(http, api, "mallory", sku="NO-SUCH-SKU").status_code == 404
    assert http.get(RESERVE).status_code == 405


def test_the_rate_limit_still_comes_first(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale]
) -> None:
    server = listening(start_server(user_rate_limit_per_s=1.0, user_rate_burst=2))
    load_sale("SOLD", total=0)
    with server.client() as http:
        answers = [reserve(http, server, "greedy").status_code for _ in range(4)]
    assert answers == [400, 400, 429, 429]


def test_a_ttl_of_zero_asks_redis_every_time(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], store: redis.Redis
) -> None:
    server = start_server(soldout_ttl_ms=0)
    load_sale("SOLD", total=0)
    with server.client() as http:
        scripts = evalsha_calls(store)
        for n in range(5):
            assert reserve(http, server, f"shopper-{n}").status_code == 400
        assert evalsha_calls(store) == scripts + 5
        assert metric(http, "flashsale_soldout_shortcircuit_total") == 0
