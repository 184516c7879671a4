"""Bad input and hostile clients: every refusal is a clear 4xx in the one error shape, never a 500,
and nothing changes in Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from flashsale.engine import Engine, Sale
from flashsale.writeback.payments import SimulatedGateway

from flashsale.launcher import free_port
from tests.api.conftest import SECRET, SKU, ApiServer
from tests.api.test_reservations import V1, assert_error

BODIES_REFUSED: list[tuple[str, bytes]] = [
    ("malformed JSON", b'{"skuId": "SKU-001",'),
    ("not an object", b'["SKU-001"]'),
    ("wrong type", b'{"skuId": 1}'),
    ("missing field", b'{"quantity": 1}'),
    ("unknown field", b'{"skuId": "SKU-001", "price": "0.01"}'),
    ("zero quantity", b'{"skuId": "SKU-001", "quantity": 0}'),
    ("negative quantity", b'{"skuId": "SKU-001", "quantity": -3}'),
    ("fractional quantity", b'{"skuId": "SKU-001", "quantity": 1.5}'),
    ("quantity as text", b'{"skuId": "SKU-001", "quantity": "1"}'),
    ("sku with a key separator", b'{"skuId": "SKU:001"}'),
    ("empty body", b""),
    ("a number, then bytes that are no JSON", b"0\xff\xfe-+"),
    ("integral float as text", b'{"skuId": "SKU-001", "quantity": "1.0"}'),
]


@pytest.mark.parametrize(("case", "body"), BODIES_REFUSED, ids=[case for case, _ in BODIES_REFUSED])
def test_a_bad_reservation_body_is_a_400_validation_error_and_changes_nothing(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine, case: str, body: bytes
) -> None:
    load_sale()
    headers = {**api.auth("alice"), "Content-Type": "application/json"}
    assert_error(http.post(f"{V1}/reservations", content=body, headers=headers), 400, "VALIDATION_ERROR")
    assert engine.get_sale(SKU).available == 10


@pytest.mark.parametrize("quantity", [b"2.0", b"2e0", b"20E-1"])
def test_a_number_without_a_fraction_is_an_integer_as_json_schema_says(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine, quantity: bytes
) -> None:
    load_sale(per_user_limit=2)
    headers = {**api.auth("alice"), "Content-Type": "application/json"}
    body = b'{"skuId": "SKU-001", "quantity": ' + quantity + b"}"
    created = http.post(f"{V1}/reservations", content=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["quantity"] == 2
    assert engine.get_sale(SKU).reserved == 2


IDEMPOTENCY_KEYS_REFUSED = {
    "empty": b"",
    "201 characters": b"k" * 201,
    "UTF-8": "café-1".encode(),
    "latin-1": "×ø".encode("latin-1"),
    "a tab inside": b"tab\tinside",
}


@pytest.mark.parametrize("key", IDEMPOTENCY_KEYS_REFUSED.values(), ids=IDEMPOTENCY_KEYS_REFUSED.keys())
def test_an_idempotency_key_that_is_not_1_to_200_printable_ascii_characters_is_a_400(
    api: ApiServer, http: httpx.Client, load_sale: Callable[..., Sale], engine: Engine, key: bytes
) -> None:
    load_sale()
    headers: dict[str, str | bytes] = {**api.auth("alice"), "Idempotency-Key": key}
    refused = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=headers)
    assert_error(refused, 400, "INVALID_ARGUMENT")
    assert engine.get_sale(SKU).reserved == 0
    kept = {**api.auth("alice"), "Idempotency-Key": "k" * 200}
    assert http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=kept).status_code == 201


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_refused_with_415(
    api: ApiServer,
    http: httpx.Client,
    load_sale: Callable[..., Sale],
    engine: Engine,
    content_type: str | None,
) -> None:
    load_sale()
    headers = api.auth("alice") | ({"Content-Type": content_type} if content_type else {})
    response = http.post(f"{V1}/reservations", content=b'{"skuId": "SKU-001"}', headers=headers)
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert engine.get_sale(SKU).available == 10


def test_an_oversized_body_is_refused_with_413_with_or_without_content_length(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale], engine: Engine
) -> None:
    api = start_server(max_body_bytes=1024)
    load_sale()
    headers = {**api.auth("alice"), "Content-Type": "application/json"}
    huge = b'{"skuId": "SKU-001", "pad": "' + b"x" * 200_000 + b'"}'

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(huge), 512):
            yield huge[start : start + 512]

    with api.client() as http:
        assert_error(http.post(f"{V1}/reservations", content=huge, headers=headers), 413, "PAYLOAD_TOO_LARGE")
        streamed = http.post(f"{V1}/reservations", content=chunked(), headers=headers)
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
        # Just under the limit is read and judged on its content.
        assert (
            http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("bob")).status_code == 201
        )
    assert engine.get_sale(SKU).reserved == 1


def _token(**claims: Any) -> str:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 60, "iss": "flashsale"}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, claims.pop("key", SECRET), "HS256")


UNAUTHORIZED: list[tuple[str, dict[str, str]]] = [
    ("no header", {}),
    ("not bearer", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
    ("bearer without a token", {"Authorization": "Bearer"}),
    ("garbage", {"Authorization": "Bearer not.a.jwt"}),
    (
        "wrong key",
        {"Authorization": f"Bearer {jwt.encode({'sub': 'alice', 'exp': 2**40}, 'other-key-' * 4)}"},
    ),
    ("expired", {"Authorization": f"Bearer {_token(exp=int(time.time()) - 5)}"}),
    ("no expiry", {"Authorization": f"Bearer {_token(exp=None)}"}),
    ("no subject", {"Authorization": f"Bearer {_token(sub=None)}"}),
    ("wrong issuer", {"Authorization": f"Bearer {_token(iss='someone-else')}"}),
    ("subject with a key separator", {"Authorization": f"Bearer {_token(sub='ali:ce')}"}),
    ("subject not a string", {"Authorization": f"Bearer {_token(sub=12345)}"}),
    ("no issuer", {"Authorization": f"Bearer {_token(iss=None)}"}),
    # exp and iat are JSON numbers, nothing PyJWT's int() happens to take.
    ("expiry as a string", {"Authorization": f"Bearer {_token(exp=str(int(time.time()) + 3600))}"}),
    ("expiry as a float string", {"Authorization": f"Bearer {_token(exp=f'{time.time() + 3600:.1f}')}"}),
    ("expiry past the year 9999", {"Authorization": f"Bearer {_token(exp=10**400)}"}),
    ("no issued-at", {"Authorization": f"Bearer {_token(iat=None)}"}),
    ("issued-at as a string", {"Authorization": f"Bearer {_token(iat=str(int(time.time())))}"}),
    ("issued-at true", {"Authorization": f"Bearer {_token(iat=True)}"}),
    ("issued-at in the future", {"Authorization": f"Bearer {_token(iat=int(time.time()) + 600)}"}),
]


@pytest.mark.parametrize(("case", "headers"), UNAUTHORIZED, ids=[case for case, _ in UNAUTHORIZED])
def test_a_missing_or_bad_token_is_401_with_a_bearer_challenge(
    api: ApiServer,
    http: httpx.Client,
    load_sale: Callable[..., Sale],
    engine: Engine,
    case: str,
    headers: dict[str, str],
) -> None:
    load_sale()
    response = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=headers)
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="flashsale"')
    assert engine.get_sale(SKU).reserved == 0


def test_a_user_over_the_request_rate_gets_429_with_retry_after_and_others_are_unaffected(
    start_server: Callable[..., ApiServer], load_sale: Callable[..., Sale]
) -> None:
    api = start_server(user_rate_limit_per_s=0.1, user_rate_burst=3)  # a token per 10 s: no refill mid-test
    load_sale()
    with api.client() as http:
        answers = [http.get(f"{V1}/reservations/rsv_0_x", headers=api.auth("greedy")) for _ in range(5)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429, 429]
        limited = assert_error(answers[-1], 429, "RATE_LIMITED")
        assert "per second" in limited["message"]
        assert int(answers[-1].headers["Retry-After"]) >= 1
        assert http.get(f"{V1}/reservations/rsv_0_x", headers=api.auth("patient")).status_code == 404


def test_a_token_with_numeric_claims_and_fractional_times_is_accepted(
    api: ApiServer, http: httpx.Client
) -> None:
    now = time.time()
    token = _token(iat=now - 1.5, exp=now + 60.25)
    response = http.get(f"{V1}/reservations/rsv_0_x", headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 404, "NOT_FOUND")


def test_unknown_paths_and_methods_answer_in_the_error_shape(api: ApiServer, http: httpx.Client) -> None:
    assert_error(http.get(f"{V1}/nothing-here"), 404, "NOT_FOUND")
    assert_error(http.patch(f"{V1}/products"), 405, "METHOD_NOT_ALLOWED")


def test_redis_down_is_503_not_500(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_pool_timeout_s=1.0)
    with api.client() as http:
        assert_error(http.get(f"{V1}/products"), 503, "SERVICE_UNAVAILABLE")
        assert_error(
            http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("a")),
            503,
            "SERVICE_UNAVAILABLE",
        )
        ready = http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["components"]["redis"]["status"] == "DOWN"
        assert http.get("/health").status_code == 200
        # The scrape still answers, so the outage shows in the error rate and flashsale_redis_up.
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert "flashsale_redis_up 0.0" in metrics.text
        assert 'route="/api/v1/products",status="503"' in metrics.text


class BrokenGateway(SimulatedGateway):
    def accepts(self, method: str) -> bool:
        raise RuntimeError("a bug in the gateway adapter")


def test_an_unexpected_error_is_a_500_in_the_error_shape_with_its_traceback_logged(
    start_server: Callable[..., ApiServer],
    load_sale: Callable[..., Sale],
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = start_server(BrokenGateway())
    load_sale()
    rid = engine.reserve(SKU, "alice").id
    with api.client() as http, caplog.at_level(logging.ERROR, logger="flashsale.api"):
        body = {"reservationId": rid, "paymentMethod": "CREDIT_CARD"}
        response = http.post(f"{V1}/orders/checkout", json=body, headers=api.auth("alice"))
    assert_error(response, 500, "INTERNAL_ERROR")
    assert "a bug in the gateway adapter" not in response.text
    logged = [r for r in caplog.records if "event=unhandled_error" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert engine.get_reservation(rid).order_id is None
