"""Catalog and reservations through a real HTTP server against real Redis: each answer and each
refusal, with Redis's counters checked after."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import redis
from flashsale.engine import Engine, Sale

from tests.api.conftest import SKU, ApiServer

V1 = "/api/v1"


def reserve(http: httpx.Client, api: ApiServer, user: str, sku: str = SKU, **extra: Any) -> httpx.Response:
    headers = {**api.auth(user), **extra.pop("headers", {})}
    return http.post(f"{V1}/reservations", json={"skuId": sku, **extra}, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert body["status"] == status
    assert body["path"] == response.request.url.path
    assert body["message"]
    assert body["timestamp"].endswith("Z")
    return body


def test_the_catalog_shows_live_counters_money_as_decimal_strings_and_the_sale_window(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    sale = load_sale(total=5, price_cents=12_999, flash_price_cents=4_905, per_user_limit=2)
    load_sale("SKU-002", total=3)
    engine.reserve(SKU, "carol", 2)

    listed = http.get(f"{V1}/products").json()
    assert [p["skuId"] for p in listed] == [SKU, "SKU-002"]
    product = http.get(f"{V1}/products/{SKU}").json()
    assert product == listed[0]
    assert product["price"] == "129.99"
    assert product["flashSalePrice"] == "49.05"
    assert (product["available"], product["reserved"], product["sold"], product["total"]) == (3, 2, 0, 5)
    assert product["perUserLimit"] == 2
    assert product["startsAt"].endswith("Z")
    assert product["endsAt"].endswith("Z")
    assert product["reservationTtlSeconds"] == sale.reservation_ttl_ms / 1000
    assert_error(http.get(f"{V1}/products/NO-SUCH-SKU"), 404, "NOT_FOUND")


def test_a_reservation_is_created_read_and_released_by_its_owner(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=2)
    created = reserve(http, api, "alice")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "RESERVED"
    assert body["userId"] == "alice"
    assert body["quantity"] == 1
    assert body["expiresAt"] > body["createdAt"]
    assert engine.get_sale(SKU).reserved == 1

    read = http.get(f"{V1}/reservations/{body['id']}", headers=api.auth("alice"))
    assert read.status_code == 200
    assert read.json() == body

    released = http.delete(f"{V1}/reservations/{body['id']}", headers=api.auth("alice"))
    assert released.status_code == 200
    assert released.json()["status"] == "CANCELLED"
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved) == (2, 0)
    again = http.delete(f"{V1}/reservations/{body['id']}", headers=api.auth("alice"))
    assert_error(again, 409, "INVALID_STATE")


def test_another_users_reservation_is_forbidden_to_read_and_to_release(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale()
    rid = reserve(http, api, "alice").json()["id"]
    assert_error(http.get(f"{V1}/reservations/{rid}", headers=api.auth("mallory")), 403, "FORBIDDEN")
    assert_error(http.delete(f"{V1}/reservations/{rid}", headers=api.auth("mallory")), 403, "FORBIDDEN")
    assert engine.get_reservation(rid).status == "RESERVED"
    assert http.get(f"{V1}/reservations/{rid}", headers=api.auth("ops", admin=True)).status_code == 200


def test_refusals_of_the_engine_map_to_their_statuses(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    now = int(time.time() * 1000)
    load_sale(total=1, per_user_limit=1)
    load_sale("SKU-LATER", starts_at=now + 3_600_000, ends_at=now + 7_200_000)
    load_sale("SKU-PAUSED", paused=True)

    assert reserve(http, api, "alice").status_code == 201
    # Sold out is answered first, whoever asks (the answer every API process may give from memory) ...
    assert_error(reserve(http, api, "alice"), 400, "OUT_OF_STOCK")
    assert_error(reserve(http, api, "bob"), 400, "OUT_OF_STOCK")
    # ... while units are left, a user at the limit is told why.
    load_sale("SKU-TWO", total=2, per_user_limit=1)
    assert reserve(http, api, "alice", "SKU-TWO").status_code == 201
    assert_error(reserve(http, api, "alice", "SKU-TWO"), 409, "ALREADY_RESERVED")
    assert_error(reserve(http, api, "bob", "SKU-LATER"), 403, "SALE_NOT_ACTIVE")
    assert_error(reserve(http, api, "bob", "SKU-PAUSED"), 403, "SALE_NOT_ACTIVE")
    assert_error(reserve(http, api, "bob", "SKU-NONE"), 404, "NOT_FOUND")
    assert_error(reserve(http, api, "bob", "SKU-LATER", quantity=2), 400, "INVALID_QUANTITY")
    assert_error(http.get(f"{V1}/reservations/rsv_1_nothing", headers=api.auth("bob")), 404, "NOT_FOUND")
    assert_error(http.get(f"{V1}/reservations/garbage", headers=api.auth("bob")), 404, "NOT_FOUND")

    # Bought once with a limit of one: the next try is ALREADY_PURCHASED, not a second unit.
    load_sale("SKU-BOUGHT", total=5)
    order = engine.begin_checkout(engine.reserve("SKU-BOUGHT", "dave").id, "dave", "CREDIT_CARD")
    engine.confirm(order.id, "dave", "tx-1")
    assert_error(reserve(http, api, "dave", "SKU-BOUGHT"), 409, "ALREADY_PURCHASED")

    sale = engine.get_sale(SKU)
    assert (sale.available, sale.reserved, sale.sold) == (0, 1, 0)


def test_an_expired_reservation_answers_410(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(reservation_ttl_ms=1000)
    rid = reserve(http, api, "alice").json()["id"]
    time.sleep(1.1)
    assert_error(
        http.delete(f"{V1}/reservations/{rid}", headers=api.auth("alice")), 410, "RESERVATION_EXPIRED"
    )
    checkout = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
    response = http.post(f"{V1}/orders/checkout", json=checkout, headers=api.auth("alice"))
    assert_error(response, 410, "RESERVATION_EXPIRED")
    assert engine.get_reservation(rid).status == "EXPIRED"
    assert engine.get_sale(SKU).available == 10


def test_a_retry_with_the_same_idempotency_key_gets_the_first_reservation(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=5, per_user_limit=3)
    first = reserve(http, api, "alice", headers={"Idempotency-Key": "k-1"})
    repeat = reserve(http, api, "alice", headers={"Idempotency-Key": "k-1"})
    other = reserve(http, api, "alice", headers={"Idempotency-Key": "k-2"})
    assert first.status_code == repeat.status_code == other.status_code == 201
    assert repeat.json()["id"] == first.json()["id"] != other.json()["id"]
    assert engine.get_sale(SKU).reserved == 2
    assert_error(reserve(http, api, "alice", headers={"Idempotency-Key": "x" * 201}), 400, "INVALID_ARGUMENT")


def test_a_full_write_behind_backlog_is_a_503_with_retry_after_and_nothing_written(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], store: redis.Redis
) -> None:
    api = start_server(backlog_budget_mb=1)  # a partition's stream may then hold this many unapplied events:
    limit = api.settings.engine_config().backlog_limit_events
    load_sale(total=5)
    stream = api.settings.keyspace().for_sku(SKU).events()
    pipe = store.pipeline(transaction=False)
    for _ in range(limit):  # a sink away long enough: the partition's events wait in its stream
        pipe.xadd(stream, {"e": '["restocked","SKU-001",1,0,5]'})
    pipe.execute()
    with api.client() as http:
        response = reserve(http, api, "alice")
    assert_error(response, 503, "BACKLOG_FULL")
    assert response.headers["retry-after"] == "5"
    sale = store.hmget(api.settings.keyspace().for_sku(SKU).sku(SKU), "available", "reserved")
    assert sale == ["5", "0"]
