"""Methods and paths through a real server: a path of the API answers a method it lacks with 405 and its
real methods in ``Allow``; a path nobody serves is 404 whatever the method; the storefront still serves
GET and HEAD at ``/``. Every refusal is in the one error shape (HEAD answers carry no body)."""

from __future__ import annotations

import re

import httpx
from flashsale.api.routes import ENDPOINTS

from tests.api.conftest import ApiServer
from tests.api.test_reservations import V1, assert_error

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EXAMPLE_PARAMS = {"skuId": "SKU-001", "reservationId": "rsv_0_x", "orderId": "ord_0_x"}


def _methods_by_path() -> dict[str, set[str]]:
    paths: dict[str, set[str]] = {}
    for endpoint in ENDPOINTS:
        methods = paths.setdefault(endpoint.path, set())
        methods.add(endpoint.method)
        if endpoint.method == "GET":
            methods.add("HEAD")
    return paths


WRONG_METHODS = [
    (path, method, ", ".join(sorted(methods)))
    for path, methods in _methods_by_path().items()
    for method in METHODS
    if method not in methods
]


def _concrete(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda match: EXAMPLE_PARAMS[match.group(1)], path)


def test_a_method_a_path_lacks_is_405_with_the_paths_real_methods_in_allow(
    api: ApiServer, http: httpx.Client
) -> None:
    # An admin token: what decides is the method, not who asks. GET on /orders/checkout is the
    # concrete path's 405, not the template /orders/{orderId}'s "no order 'checkout'".
    headers = api.auth("ops", admin=True)
    assert ("/api/v1/orders/checkout", "GET", "POST") in WRONG_METHODS
    for path, method, allow in WRONG_METHODS:
        response = http.request(method, _concrete(path), headers=headers)
        assert response.headers.get("Allow") == allow, (method, path, response.status_code, response.text)
        if method == "HEAD":
            assert response.status_code == 405, (method, path)
        else:
            body = assert_error(response, 405, "METHOD_NOT_ALLOWED")
            assert method in body["message"]
            assert allow in body["message"]


UNSERVED = [
    f"{V1}/nothing-here",
    f"{V1}/reservations/",
    f"{V1}/products/",
    f"{V1}/products/SKU-001/nothing",
    f"{V1}/orders",
    "/nothing.js",
    "/api",
]


def test_a_path_nobody_serves_is_404_for_every_method(api: ApiServer, http: httpx.Client) -> None:
    for path in UNSERVED:
        for method in METHODS:
            response = http.request(method, path, headers=api.auth("alice"))
            assert "Allow" not in response.headers, (method, path)
            if method == "HEAD":
                assert response.status_code == 404, (method, path)
            else:
                assert_error(response, 404, "NOT_FOUND")


def test_the_storefront_serves_get_and_head_and_answers_other_methods_with_405(http: httpx.Client) -> None:
    for path in ("/", "/index.html", "/app.js", "/style.css"):
        page = http.get(path)
        assert page.status_code == 200, path
        assert page.content
        head = http.head(path)
        assert head.status_code == 200, path
        assert head.headers["content-length"] == str(len(page.content))
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            refused = http.request(method, path)
            assert refused.headers.get("Allow") == "GET, HEAD", (method, path)
            assert_error(refused, 405, "METHOD_NOT_ALLOWED")
    assert "<html" in http.get("/").text.lower()
