"""A hot SKU split into stock buckets, over HTTP (engine/buckets.py): an admin creates it with ``buckets``,
shoppers homed on every bucket buy exactly its units, the catalog shows one SKU, and once sold out the
API answers from memory until a unit comes back in any bucket, which a shopper homed on another bucket
then gets (moved to their bucket)."""

from __future__ import annotations

import time

import httpx
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.keys import home_bucket, new_transfer_id

from tests.api.conftest import ApiServer
from tests.api.test_soldout import listening, metric

ADMIN = "/api/v1/admin"
SKU, BUCKETS, UNITS = "HOT-BUCKETS", 4, 12


def _homed(bucket: int, count: int) -> list[str]:
    return [u for u in (f"shopper-{n}" for n in range(4000)) if home_bucket(u, BUCKETS) == bucket][:count]


def test_a_bucketed_sale_over_http_sells_exactly_its_units_and_reopens_when_one_comes_back(
    api: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    listening(api)
    sale = {"name": "Hot", "price": "10", "flashSalePrice": "5", "total": UNITS, "perUserLimit": 1,
            "startsAt": "2020-01-01T00:00:00Z", "reservationTtlSeconds": 300, "buckets": BUCKETS}  # fmt: skip
    created = http.put(f"{ADMIN}/sales/{SKU}", json=sale, headers=api.auth("ops", admin=True))
    assert created.status_code == 200, created.text
    assert (created.json()["total"], created.json()["available"]) == (UNITS, UNITS)
    assert engine.get_sale(SKU).buckets == BUCKETS
    again = http.put(f"{ADMIN}/sales/{SKU}", json={"buckets": 2}, headers=api.auth("ops", admin=True))
    assert again.status_code == 409
    assert again.json()["error"] == "INVALID_STATE"

    # Most shoppers homed on bucket 0: the other buckets' units move to them.
    shoppers = _homed(1, 2) + _homed(0, 14)
    answers = {}
    for user in shoppers:
        response = http.post(
            "/api/v1/reservations", json={"skuId": SKU, "quantity": 1}, headers=api.auth(user)
        )
        answers[user] = response
    won = [u for u, r in answers.items() if r.status_code == 201]
    refused = [r.json()["error"] for r in answers.values() if r.status_code != 201]
    assert len(won) == UNITS
    assert refused == ["OUT_OF_STOCK"] * (len(shoppers) - UNITS)
    product = http.get(f"/api/v1/products/{SKU}").json()
    assert (product["total"], product["available"]) == (UNITS, 0)
    assert [p["skuId"] for p in http.get("/api/v1/products").json()].count(SKU) == 1

    # Sold out: answered from memory...
    before = metric(http, "flashsale_soldout_shortcircuit_total")
    late = _homed(2, 3)
    response = http.post(
        "/api/v1/reservations", json={"skuId": SKU, "quantity": 1}, headers=api.auth(late[0])
    )
    assert response.status_code == 400
    assert metric(http, "flashsale_soldout_shortcircuit_total") == before + 1
    # ...until a holder homed on bucket 1 releases: that bucket's channel drops the flag, and a shopper
    # homed on bucket 2 gets the unit, moved to their bucket.
    holder = next(u for u in won if home_bucket(u, BUCKETS) == 1)
    hold = answers[holder].json()
    released = http.delete(f"/api/v1/reservations/{hold['id']}", headers=api.auth(holder))
    assert released.status_code == 200, released.text
    deadline = time.monotonic() + 1.0
    while (
        response := http.post(
            "/api/v1/reservations", json={"skuId": SKU, "quantity": 1}, headers=api.auth(late[1])
        )
    ).status_code != 201:
        assert time.monotonic() < deadline, response.text
    sale_now = engine.get_sale(SKU)
    assert (sale_now.available, sale_now.reserved, sale_now.moving) == (0, UNITS, 0)


def test_units_moving_between_buckets_are_a_metric_the_stuck_transfer_alert_watches(
    api: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    engine.load_sale(SaleSettings(sku=SKU, total=8), buckets=BUCKETS)
    giver = engine.keys.for_bucket(SKU, 1)
    units, _at = engine._run(engine.ops.transfer_out(SKU, 1, new_transfer_id(giver), 0, 2))
    assert units == 2  # withdrawn, never deposited: a cut transfer
    deadline = time.monotonic() + 5
    while metric(http, "flashsale_stock_units", sku=SKU, state="moving") != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(http, "flashsale_stock_units", sku=SKU, state="total") == 8
    assert metric(http, "flashsale_stock_units", sku=SKU, state="available") == 6
    engine.finish_transfers(giver.index, grace_ms=0)
    while metric(http, "flashsale_stock_units", sku=SKU, state="moving") != 0:
        assert time.monotonic() < deadline + 5
        time.sleep(0.1)
