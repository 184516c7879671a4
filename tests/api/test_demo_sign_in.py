"""Demo sign-in: POST /api/v1/demo/token exists only when FLASHSALE_DEMO_SIGN_IN is on (`flashsale up`)."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.conftest import SKU, ApiServer


def test_demo_sign_in_is_off_unless_configured(start_server: Callable[..., ApiServer]) -> None:
    api = start_server()
    with api.client() as http:
        answer = http.post("/api/v1/demo/token", json={"user": "alice"})
    assert answer.status_code == 404
    assert answer.json()["error"] == "NOT_FOUND"


def test_demo_token_acts_as_the_named_shopper_only(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., object]
) -> None:
    load_sale(total=5)
    api = start_server(demo_sign_in=True)
    with api.client() as http:
        answer = http.post("/api/v1/demo/token", json={"user": "alice"})
        assert answer.status_code == 201
        body = answer.json()
        assert body["userId"] == "alice"
        headers = {"Authorization": f"Bearer {body['token']}"}
        reserved = http.post("/api/v1/reservations", json={"skuId": SKU, "quantity": 1}, headers=headers)
        assert reserved.status_code == 201
        assert reserved.json()["userId"] == "alice"
        # The demo token is an ordinary shopper's: admin routes stay closed to it.
        admin = http.post(f"/api/v1/admin/sales/{SKU}/pause", headers=headers)
        assert admin.status_code == 403


def test_demo_sign_in_refuses_bad_names(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(demo_sign_in=True)
    with api.client() as http:
        for body in ({"user": ""}, {"user": "a b"}, {"user": "x" * 129}, {"name": "alice"}, {"user": 7}):
            answer = http.post("/api/v1/demo/token", json=body)
            assert answer.status_code == 400, body
            assert answer.json()["error"] == "VALIDATION_ERROR"
