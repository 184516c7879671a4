"""Any text where the API takes an id — the reservation, order and SKU ids in paths, the reservationId of a
checkout body — through a real server on real Redis: never a 5xx, always the one error shape.

Issue 12: ``'²'`` passed ``str.isdigit`` as an id's partition digit and then crashed ``int()``, a 500 on
every route that takes a reservation or order id. The ids drawn here are arbitrary unicode, odd ASCII
(control characters, ``/``, ``%``, ``?``, ``#``, dots) and id-shaped text (``rsv_<part>_<rest>``) whose
partition part is any unicode digit, numeral or odd text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.api.conftest import ApiServer
from tests.api.test_reservations import V1

# Surrogates (Cs) have no UTF-8 form: no client can send them.
UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
ODD_ASCII = st.text(st.characters(max_codepoint=127), max_size=40)
NUMERALS = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=4)
ID_SHAPED = st.builds(
    "{}_{}_{}".format,
    st.sampled_from(["rsv", "ord", "RSV", "rsv_", "ord_rsv", ""]),
    st.one_of(NUMERALS, st.sampled_from(["0", "1", "15", "16", "00", "-1", "1e1", " 1"]), ODD_ASCII, UNICODE),
    st.one_of(st.text("0123456789abcdef", max_size=40), ODD_ASCII, UNICODE),
)
IDS = st.one_of(ID_SHAPED, UNICODE, ODD_ASCII, st.sampled_from(["rsv_²_x", "ord_²_x", "rsv_١_x", ".", ".."]))


@dataclass(frozen=True)
class IdRoute:
    method: str
    path: str  # "{id}" marks where the id goes; without it, the id goes into the body's reservationId
    access: str  # "public", "user" or "admin"
    body: dict[str, Any] | None = None


ROUTES = [
    IdRoute("GET", f"{V1}/products/{{id}}", "public"),
    IdRoute("GET", f"{V1}/reservations/{{id}}", "user"),
    IdRoute("DELETE", f"{V1}/reservations/{{id}}", "user"),
    IdRoute("POST", f"{V1}/orders/checkout", "user", {"paymentMethod": "CREDIT_CARD"}),
    IdRoute("GET", f"{V1}/orders/{{id}}", "user"),
    IdRoute("POST", f"{V1}/orders/{{id}}/cancel", "user"),
    # Admin changes of a SKU that does not exist: refused (404) or, for an id that is no SKU, 400.
    IdRoute("PUT", f"{V1}/admin/sales/{{id}}", "admin", {"name": "Probe"}),
    IdRoute("POST", f"{V1}/admin/sales/{{id}}/restock", "admin", {"delta": 1}),
    IdRoute("POST", f"{V1}/admin/sales/{{id}}/pause", "admin"),
    IdRoute("POST", f"{V1}/admin/sales/{{id}}/resume", "admin"),
    IdRoute("POST", f"{V1}/admin/orders/{{id}}/fulfil", "admin"),
    IdRoute("POST", f"{V1}/admin/orders/{{id}}/cancel", "admin"),
]


def _in_path(entity_id: str) -> str:
    # Every byte that is not unreserved is percent-encoded ("/" too), and so are dots: ".." must reach
    # the route as an id, not be resolved away as a path segment by the client.
    return quote(entity_id, safe="").replace(".", "%2E")


def _assert_error_shape(response: httpx.Response, sent_path: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.is_success:  # an id that happens to be valid and present: not an error
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error", "message", "status", "path", "timestamp"}, body
    assert body["status"] == response.status_code
    assert body["error"].isupper()
    assert body["message"]
    assert body["path"] == unquote(sent_path)
    assert body["timestamp"].endswith("Z")


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entity_id=IDS)
@example(entity_id="rsv_²_x")  # issue 12's cases, every run
@example(entity_id="ord_²_x")
def test_any_id_on_any_id_taking_route_is_a_4xx_in_the_error_shape_never_a_5xx(
    api: ApiServer, http: httpx.Client, route: IdRoute, entity_id: str
) -> None:
    headers = {} if route.access == "public" else api.auth("prober", admin=route.access == "admin")
    if "{id}" in route.path:
        path = route.path.replace("{id}", _in_path(entity_id))
        body = route.body
    else:
        path = route.path
        body = {**(route.body or {}), "reservationId": entity_id}
    # Built by hand: the encoded path must go out exactly as written here.
    request = http.build_request(route.method, path, json=body, headers=headers)
    request.url = request.url.copy_with(raw_path=path.encode("ascii"))
    response = http.send(request)
    _assert_error_shape(response, path)
