"""Minting bearer tokens: HS256 JWTs with ``sub`` = user id, ``exp``, ``iss`` and ``admin``.

Only PyJWT and the standard library, so ``flashsale token`` starts without the HTTP stack or the Redis
client; ``api.auth`` verifies what this module issues.
"""

from __future__ import annotations

import time

import jwt


def issue_token(secret: str, issuer: str, user: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
    """A bearer token this API accepts: HS256, ``sub`` = user, ``exp`` = now + ttl_s."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + ttl_s, "iss": issuer, "admin": admin}
    return jwt.encode(claims, secret, algorithm="HS256")
