"""Admin routes: sales, restock, pause/resume, fulfil and cancel; only with an admin token."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from flashsale.engine import Engine, Sale

from tests.api.conftest import SKU, ApiServer
from tests.api.test_orders import checkout
from tests.api.test_reservations import V1, assert_error, reserve

ADMIN = f"{V1}/admin"


def test_an_admin_creates_a_sale_changes_it_restocks_and_pauses_it(
    api: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    admin = api.auth("ops", admin=True)
    sale = {
        "name": "Flash sneaker",
        "price": "129.99",
        "flashSalePrice": "49.5",
        "total": 100,
        "perUserLimit": 2,
        "startsAt": "2020-01-01T00:00:00Z",
        "endsAt": "2100-01-01T00:00:00Z",
        "reservationTtlSeconds": 300,
    }
    created = http.put(f"{ADMIN}/sales/{SKU}", json=sale, headers=admin)
    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["price"], body["flashSalePrice"], body["total"], body["available"]) == (
        "129.99",
        "49.50",
        100,
        100,
    )
    assert body["startsAt"] == "2020-01-01T00:00:00Z"
    assert body["reservationTtlSeconds"] == 300
    stored = engine.get_sale(SKU)
    assert (stored.price_cents, stored.flash_price_cents, stored.reservation_ttl_ms) == (
        12_999,
        4_950,
        300_000,
    )

    changed = http.put(f"{ADMIN}/sales/{SKU}", json={"name": "Renamed", "total": 80}, headers=admin).json()
    assert (changed["name"], changed["total"], changed["available"], changed["price"]) == (
        "Renamed",
        80,
        80,
        "129.99",
    )

    restocked = http.post(f"{ADMIN}/sales/{SKU}/restock", json={"delta": 20}, headers=admin).json()
    assert (restocked["total"], restocked["available"]) == (100, 100)
    too_many = http.post(f"{ADMIN}/sales/{SKU}/restock", json={"delta": -101}, headers=admin)
    assert_error(too_many, 400, "INVALID_QUANTITY")
    assert engine.get_sale(SKU).total == 100

    assert http.post(f"{ADMIN}/sales/{SKU}/pause", headers=admin).json()["paused"] is True
    assert_error(reserve(http, api, "alice"), 403, "SALE_NOT_ACTIVE")
    assert http.post(f"{ADMIN}/sales/{SKU}/resume", headers=admin).json()["paused"] is False
    assert reserve(http, api, "alice").status_code == 201

    assert_error(
        http.put(f"{ADMIN}/sales/SKU-NEW", json={"name": "no total"}, headers=admin), 404, "NOT_FOUND"
    )
    assert_error(http.post(f"{ADMIN}/sales/SKU-NEW/pause", headers=admin), 404, "NOT_FOUND")
    bad_window = {"total": 1, "startsAt": "2030-01-01T00:00:00Z", "endsAt": "2029-01-01T00:00:00Z"}
    assert_error(http.put(f"{ADMIN}/sales/SKU-NEW", json=bad_window, headers=admin), 400, "INVALID_ARGUMENT")
    assert_error(
        http.put(f"{ADMIN}/sales/SKU-NEW", json={"price": "1.999"}, headers=admin), 400, "VALIDATION_ERROR"
    )
    assert [s.sku for s in engine.list_sales()] == [SKU]


def test_an_admin_fulfils_and_cancels_any_users_order(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=2)
    admin = api.auth("ops", admin=True)
    first = checkout(http, api, "alice", reserve(http, api, "alice").json()["id"]).json()["id"]
    second = checkout(http, api, "bob", reserve(http, api, "bob").json()["id"]).json()["id"]

    fulfilled = http.post(f"{ADMIN}/orders/{first}/fulfil", headers=admin)
    assert fulfilled.status_code == 200
    assert fulfilled.json()["status"] == "FULFILLED"
    assert_error(http.post(f"{ADMIN}/orders/{first}/fulfil", headers=admin), 409, "INVALID_STATE")
    assert_error(http.post(f"{ADMIN}/orders/{first}/cancel", headers=admin), 409, "INVALID_STATE")

    cancelled = http.post(f"{ADMIN}/orders/{second}/cancel", headers=admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert_error(http.post(f"{ADMIN}/orders/ord_0_none/fulfil", headers=admin), 404, "NOT_FOUND")
    sale = engine.get_sale(SKU)
    assert (sale.available, sale.sold) == (1, 1)


def test_admin_routes_refuse_a_missing_token_with_401_and_a_users_token_with_403(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    load_sale(total=5)
    routes = [
        ("PUT", f"{ADMIN}/sales/{SKU}", {"total": 1}),
        ("POST", f"{ADMIN}/sales/{SKU}/restock", {"delta": 5}),
        ("POST", f"{ADMIN}/sales/{SKU}/pause", None),
        ("POST", f"{ADMIN}/sales/{SKU}/resume", None),
        ("POST", f"{ADMIN}/orders/ord_0_x/fulfil", None),
        ("POST", f"{ADMIN}/orders/ord_0_x/cancel", None),
    ]
    for method, path, body in routes:
        anonymous = http.request(method, path, json=body)
        assert_error(anonymous, 401, "UNAUTHORIZED")
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(http.request(method, path, json=body, headers=api.auth("alice")), 403, "FORBIDDEN")
    sale = engine.get_sale(SKU)
    assert (sale.total, sale.paused) == (5, False)
