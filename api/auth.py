"""Who is calling: an ``Authorization: Bearer`` HS256 JWT, ``sub`` = user id, ``admin: true`` for admins.

The signature, ``iss``, ``exp`` and ``iat`` (required JSON numbers: PyJWT alone takes ``"exp": "99999999999"``
as a number) and the shape of ``sub`` (required) are checked; the secret comes from
``Settings.jwt_secret``. Verified tokens are remembered (bounded) so a busy client's token is checked
once, its expiry on every request.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from flashsale.api.errors import ApiError
from flashsale.api.tokens import issue_token as issue_token  # minting lives in api.tokens (light)
from starlette.requests import Request

_USER_ID = re.compile(r"[A-Za-z0-9\-_.@]{1,128}")
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub"]
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


def _numeric_date(value: object) -> bool:
    """A JSON number (not a string, not a boolean) of seconds between 1970 and the year 9999; NaN and
    infinity fail the comparison."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= _LATEST_NUMERIC_DATE


class Authenticator:
    def __init__(self, secret: str, issuer: str, *, remembered: int = 100_000) -> None:
        self._secret = secret
        self._issuer = issuer
        self._remembered = remembered
        self._verified: OrderedDict[str, Caller] = OrderedDict()

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
        caller = self._verified.get(token)
        if caller is None:
            caller = self._decode(token)
            self._verified[token] = caller
            if len(self._verified) > self._remembered:
                self._verified.popitem(last=False)
        if caller.expires_at <= time.time():
            self._verified.pop(token, None)
            raise _unauthorized("the token has expired")
        return caller

    def _decode(self, token: str) -> Caller:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self._issuer,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as error:
            raise _unauthorized(f"the token is not valid: {error}") from None
        # PyJWT passes exp and iat through int(): a string of digits, or true, would do. Not here.
        for claim in ("exp", "iat"):
            if not _numeric_date(claims[claim]):
                raise _unauthorized(f"the token's {claim} claim must be a number of seconds since 1970")
        user = claims["sub"]
        if not isinstance(user, str) or not _USER_ID.fullmatch(user):
            raise _unauthorized("the token's subject must be 1-128 letters, digits or -_.@")
        return Caller(user=user, admin=claims.get("admin") is True, expires_at=float(claims["exp"]))

    def admin(self, request: Request) -> Caller:
        caller = self.caller(request)
        if not caller.admin:
            raise ApiError(403, "FORBIDDEN", "this route needs an admin token")
        return caller
