"""Who is calling: an ``Authorization: Bearer`` HS256 JWT, ``sub`` = user id, ``admin: true`` for admins.

The signature, ``iss``, ``exp``, ``iat`` and ``nbf`` (JSON numbers of seconds: not strings, not booleans;
``iat`` and ``nbf`` not in the future), the shape of ``sub``, and that the token names no audience and no
critical header are checked; the secret comes from ``Settings.jwt_secret``. Verified tokens are remembered
(bounded), so a busy client's token is checked once, its expiry on every request.

Why not ``jwt.decode``: in a flash sale nearly every reservation brings a token the process has not seen
(one press of "buy" per shopper), and PyJWT's general decoder (every algorithm, key type and option; a
per-character base64 check in Python; json; datetime) costs ~45 µs per token on the bench machine, a fifth
of a reservation's API CPU. This module checks the one form this API accepts with the standard library's
HMAC (one C call), ``base64`` and msgspec in ~6 µs. PyJWT stays the minter (``api.tokens``) and the oracle:
``tests/unit/test_auth.py`` feeds both thousands of generated and mutated tokens and requires the same
verdict for every one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from flashsale.api.errors import ApiError
from flashsale.api.tokens import issue_token as issue_token  # minting lives in api.tokens (light)
from starlette.requests import Request

_USER_ID = re.compile(r"[A-Za-z0-9\-_.@]{1,128}")
# header.payload.signature, base64url without padding; HS256's signature is 32 bytes = 43 characters.
_COMPACT_HS256 = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")
# A NumericDate (RFC 7519) this API takes: seconds since the epoch, up to the end of the year 9999.
_LATEST_NUMERIC_DATE = 253_402_300_799


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    admin: bool
    expires_at: float


def _unauthorized(message: str, error: str = "invalid_token") -> ApiError:
    challenge = f'Bearer realm="flashsale", error="{error}", error_description="{message}"'
    return ApiError(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": challenge})


def _b64decode(segment: str) -> bytes:
    """One base64url segment without padding (its alphabet already checked by ``_COMPACT_HS256``), in its
    one canonical spelling: the decoder ignores the unused low bits of the last character, so four
    spellings of a signature would decode alike; only the one that encodes back to itself is taken."""
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise binascii.Error("not canonical base64url")
    return raw


class _Header(msgspec.Struct):
    alg: str
    crit: object = None  # present at all: refused (RFC 7515 4.1.11: we understand no extension)
    b64: object = None  # RFC 7797's unencoded payload: refused
    kid: str | None = None


class _Claims(msgspec.Struct):
    """The claims this API reads. msgspec refuses a string or a boolean where a number is due, and a
    missing or null ``sub``, ``iss``, ``exp`` or ``iat``; other claims are ignored (``jti`` must be a string,
    as RFC 7519 says)."""

    sub: str
    iss: str
    exp: int | float
    iat: int | float
    nbf: int | float | msgspec.UnsetType = msgspec.UNSET  # absent, or a number (not null)
    aud: object = None
    jti: str | msgspec.UnsetType = msgspec.UNSET
    admin: object = None


_HEADER = msgspec.json.Decoder(_Header)
_CLAIMS = msgspec.json.Decoder(_Claims)


class Authenticator:
    def __init__(self, secret: str, issuer: str, *, remembered: int = 100_000) -> None:
        self._key = secret.encode()
        self._issuer = issuer
        self._remembered = remembered
        # token -> (user, admin, expires_at): plain tuples of atoms, which the garbage collector stops
        # tracking, so a full cache of shoppers' tokens adds nothing to the API's GC pauses.
        self._verified: OrderedDict[str, tuple[str, bool, float]] = OrderedDict()

    def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if not header:
            challenge = {"WWW-Authenticate": 'Bearer realm="flashsale"'}
            raise ApiError(401, "UNAUTHORIZED", "a bearer token is required", headers=challenge)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
        return self.verify(token.strip())

    def verify(self, token: str) -> Caller:
        remembered = self._verified.get(token)
        if remembered is None:
            caller = self._decode(token)
            self._verified[token] = (caller.user, caller.admin, caller.expires_at)
            if len(self._verified) > self._remembered:
                self._verified.popitem(last=False)
        else:
            caller = Caller(*remembered)
        if caller.expires_at <= time.time():
            self._verified.pop(token, None)
            raise _unauthorized("the token has expired")
        return caller

    def _decode(self, token: str) -> Caller:
        parts = _COMPACT_HS256.fullmatch(token)
        if parts is None:
            raise _unauthorized("the token is not valid: not a compact HS256 JWS (header.payload.signature)")
        header_b64, payload_b64, signature_b64 = parts.groups()
        signed = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        try:
            header = _HEADER.decode(_b64decode(header_b64))
            signature = _b64decode(signature_b64)
        except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError) as error:
            raise _unauthorized(f"the token's header is not valid: {error}") from None
        if header.alg != "HS256" or header.crit is not None or header.b64 is not None:
            raise _unauthorized("the token must be signed with HS256 and have no critical header")
        if not hmac.compare_digest(hmac.digest(self._key, signed, "sha256"), signature):
            raise _unauthorized("the token is not valid: Signature verification failed")
        try:
            claims = _CLAIMS.decode(_b64decode(payload_b64))
        except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError) as error:
            raise _unauthorized(f"the token's claims are not valid: {error}") from None
        now = time.time()
        if claims.iss != self._issuer:
            raise _unauthorized("the token is not valid: Invalid issuer")
        if claims.aud:  # a token for some audience is not for this API (an empty one names none)
            raise _unauthorized("the token is not valid: Invalid audience")
        for name, value in (("exp", claims.exp), ("iat", claims.iat), ("nbf", claims.nbf)):
            if value is not msgspec.UNSET and not 0 <= value <= _LATEST_NUMERIC_DATE:
                raise _unauthorized(f"the token's {name} claim must be a number of seconds since 1970")
        if int(claims.exp) <= now:
            raise _unauthorized("the token has expired")
        if int(claims.iat) > now or (claims.nbf is not msgspec.UNSET and int(claims.nbf) > now):
            raise _unauthorized("the token is not valid: The token is not yet valid")
        if not _USER_ID.fullmatch(claims.sub):
            raise _unauthorized("the token's subject must be 1-128 letters, digits or -_.@")
        return Caller(user=claims.sub, admin=claims.admin is True, expires_at=float(claims.exp))

    def admin(self, request: Request) -> Caller:
        caller = self.caller(request)
        if not caller.admin:
            raise ApiError(403, "FORBIDDEN", "this route needs an admin token")
        return caller
