"""Token verification (api.auth) against PyJWT as the oracle: every generated or mutated token gets the same
verdict (and the same user) from both, so the lean HS256 check accepts nothing PyJWT would refuse."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import jwt
import pytest
from flashsale.api.auth import Authenticator, Caller
from flashsale.api.errors import ApiError
from flashsale.api.tokens import issue_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECRET = "s3cret-for-the-unit-tests-only-0123456789"
ISSUER = "flashsale"
NOW = int(time.time())
_USER_ID = re.compile(r"[A-Za-z0-9\-_.@]{1,128}")
_LATEST = 253_402_300_799


def oracle(token: str) -> tuple[str, bool] | None:
    """What PyJWT says, plus the checks the API made on top of it before (JSON numbers for the times, the
    shape of ``sub``): the user and admin flag, or None for a refusal."""
    try:
        claims = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
    except jwt.InvalidTokenError:
        return None
    for name in ("exp", "iat", "nbf"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _LATEST:
            return None
    sub = claims["sub"]
    if not isinstance(sub, str) or not _USER_ID.fullmatch(sub):
        return None
    return sub, claims.get("admin") is True


def verdict(token: str) -> tuple[str, bool] | None:
    try:
        caller = Authenticator(SECRET, ISSUER).verify(token)
    except ApiError as error:
        refusal = (error.status, error.code)
    else:
        return caller.user, caller.admin
    assert refusal == (401, "UNAUTHORIZED")
    return None


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: Any, key: str = SECRET) -> str:
    """A token PyJWT would sign (any header, any claims JSON), so the header's own fields can be odd."""
    return jwt.api_jws.PyJWS().encode(
        json.dumps(claims).encode(), key, algorithm="HS256", headers=header, json_encoder=None
    )


numbers = st.one_of(
    st.integers(NOW - 100_000, NOW + 100_000),
    st.floats(NOW - 100, NOW + 100),
    st.integers(-10, 10),
    st.integers(_LATEST - 2, _LATEST + 2),
    st.integers(10**20, 10**30),
    st.floats(allow_nan=False),
    st.just(True),
    st.just(False),
    st.none(),
    st.integers(NOW - 10, NOW + 10_000).map(str),
)
valid_claims = st.fixed_dictionaries(
    {
        "sub": st.from_regex(_USER_ID, fullmatch=True),
        "iss": st.just(ISSUER),
        "exp": st.integers(NOW + 3600, NOW + 100_000),  # valid for the whole suite
        "iat": st.integers(NOW - 100_000, NOW - 1),
        "admin": st.booleans(),
    }
)


# One claim of a valid token changed to one of these (or removed), one at a time or two together: the
# verdicts then hinge on that claim alone, where a random dictionary would nearly always be refused anyway.
odd_values: dict[str, st.SearchStrategy[Any]] = {
    "sub": st.one_of(st.from_regex(_USER_ID, fullmatch=True), st.text(max_size=5), st.integers(), st.none()),
    "iss": st.one_of(
        st.just(ISSUER), st.sampled_from(["other", "", "flashsale ", "Flashsale"]), st.integers()
    ),
    "exp": numbers,
    "iat": numbers,
    "nbf": numbers,
    "aud": st.one_of(st.just("flashsale"), st.lists(st.text(max_size=3), max_size=2)),
    "jti": st.one_of(st.text(max_size=4), st.integers()),
    "admin": st.one_of(st.booleans(), st.just("true"), st.just(1), st.none()),
}
_REMOVE = object()


@st.composite
def claims_strategy(draw: st.DrawFn) -> dict[str, Any]:
    claims: dict[str, Any] = draw(valid_claims)
    for name in draw(st.lists(st.sampled_from(sorted(odd_values)), min_size=1, max_size=2, unique=True)):
        value = draw(st.one_of(odd_values[name], st.just(_REMOVE)))
        if value is _REMOVE:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(claims=claims_strategy(), key=st.sampled_from([SECRET, SECRET + "x"]))
def test_generated_claims_get_pyjwts_verdict(claims: dict[str, Any], key: str) -> None:
    token = sign({"alg": "HS256", "typ": "JWT"}, claims, key)
    assert verdict(token) == oracle(token)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    claims=valid_claims,
    at=st.integers(0, 400),
    replacement=st.sampled_from(list("A_-.=+/ \x00é0zZ")),
    cut=st.integers(0, 3),
)
def test_mutated_tokens_get_pyjwts_verdict(
    claims: dict[str, Any], at: int, replacement: str, cut: int
) -> None:
    token = issue_token(SECRET, ISSUER, claims["sub"], admin=claims["admin"])
    assert verdict(token) == oracle(token) == (claims["sub"], claims["admin"])
    at %= len(token)
    mutated = token[:at] + replacement + token[at + 1 :]
    assert verdict(mutated) == oracle(mutated)
    trimmed = mutated[: len(mutated) - cut]
    assert verdict(trimmed) == oracle(trimmed)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS384"},
        {"alg": "none"},
        {"alg": "hs256"},
        {"typ": "JWT"},
        {"alg": "HS256", "kid": 7},
    ],
)
def test_headers_pyjwt_refuses_are_refused(header: dict[str, Any]) -> None:
    claims = {"sub": "alice", "iss": ISSUER, "exp": NOW + 60, "iat": NOW}
    token = (
        b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode()) + "." + b64(b"\x00" * 32)
    )
    assert verdict(token) is None
    assert oracle(token) is None


@pytest.mark.parametrize("header", [{"alg": "HS256", "crit": ["exp"]}, {"alg": "HS256", "kid": "k1"}])
def test_a_critical_header_is_refused_and_a_key_id_is_ignored(header: dict[str, Any]) -> None:
    """Stricter than PyJWT on purpose where it matters: no extension is understood here, so any ``crit``
    is refused (RFC 7515 4.1.11)."""
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISSUER, "exp": now + 60, "iat": now}
    token = sign(header, claims)
    expected = None if "crit" in header else ("alice", False)
    assert verdict(token) == expected


def test_a_remembered_token_is_still_refused_once_it_expires() -> None:
    auth = Authenticator(SECRET, ISSUER)
    now = time.time()
    token = sign({"alg": "HS256"}, {"sub": "bob", "iss": ISSUER, "exp": now + 1.2, "iat": int(now)})
    assert auth.verify(token) == Caller(user="bob", admin=False, expires_at=now + 1.2)
    time.sleep(1.3)
    with pytest.raises(ApiError, match="expired"):
        auth.verify(token)


def test_a_signature_spelt_another_way_is_refused() -> None:
    """The last character of a signature has two bits the decoder ignores: four spellings decode to the
    same bytes. Only the canonical one is taken (as PyJWT does): a token is one string, not four."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = issue_token(SECRET, ISSUER, "alice")
    last = alphabet.index(token[-1])
    assert verdict(token) == ("alice", False)
    for unused in (1, 2, 3):
        respelt = token[:-1] + alphabet[last ^ unused]
        assert base64.urlsafe_b64decode(respelt.rsplit(".", 1)[1] + "=") == base64.urlsafe_b64decode(
            token.rsplit(".", 1)[1] + "="
        )
        assert verdict(respelt) is None
        assert oracle(respelt) is None
