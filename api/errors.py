"""Every refusal of the API as one JSON shape, ``{error, message, status, path, timestamp}``.

One function, ``error_response``, turns any exception into that shape: the engine's refusals by their
stable code, the API's own (``ApiError``), Starlette's 404/405, Redis being unreachable (503), and
anything unexpected (500, logged with its traceback).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec
from flashsale.api.schemas import ErrorBody, OrderBody
from flashsale.engine import FlashSaleError
from flashsale.engine.errors import RateLimited
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("flashsale.api")

# The engine's refusal codes and their HTTP statuses (the design document's table, plus the engine's own).
STATUS_BY_CODE: dict[str, int] = {
    "OUT_OF_STOCK": 400,
    "INVALID_QUANTITY": 400,
    "INVALID_ARGUMENT": 400,
    "FORBIDDEN": 403,
    "SALE_NOT_ACTIVE": 403,
    "NOT_FOUND": 404,
    "ALREADY_RESERVED": 409,
    "ALREADY_PURCHASED": 409,
    "CHECKOUT_IN_PROGRESS": 409,
    "INVALID_STATE": 409,
    "RESERVATION_EXPIRED": 410,
    # The waiting room: reserve without a live admission; no room on this sale; not in its line; the
    # line takes nobody (sold out, ended) or nobody yet; over the per-user rate kept in Redis.
    "NOT_ADMITTED": 403,
    "NO_WAITING_ROOM": 404,
    "NOT_IN_QUEUE": 404,
    "QUEUE_CLOSED": 409,
    "QUEUE_NOT_OPEN": 409,
    "RATE_LIMITED": 429,
    # The write-behind backlog reached its memory budget (PostgreSQL or Kafka away too long): nothing was
    # written, try again later.
    "BACKLOG_FULL": 503,
    "NOT_REPLICATED": 503,  # WAIT mode: fewer replicas than asked have the change (engine.errors)
}
# Refusals a client should simply retry after a while.
RETRY_AFTER_S = {"BACKLOG_FULL": 5}

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_HTTP_MESSAGES = {
    404: "nothing is at this path",
    405: "{method} is not allowed on this path (it answers {allow})",
}
_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """A refusal decided by the API layer itself (validation, auth, limits, payment)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        order: OrderBody | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.order = order


def validation_error(message: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message)


def render(
    status: int,
    code: str,
    message: str,
    path: str,
    headers: dict[str, str] | None = None,
    order: OrderBody | None = None,
) -> Response:
    body = ErrorBody(
        error=code, message=message, status=status, path=path, timestamp=datetime.now(UTC), order=order
    )
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


async def error_response(request: Request, exc: Exception) -> Response:
    """The one exception handler: any exception -> status + the error shape."""
    path: str = request.scope["path"]  # as routed: decoded, where request.url re-escapes ? # and \
    if isinstance(exc, FlashSaleError):
        retry = RETRY_AFTER_S.get(exc.code)
        if isinstance(exc, RateLimited):
            retry = max(1, -(-exc.retry_after_ms // 1000))
        headers = {"Retry-After": str(retry)} if retry else None
        return render(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, path, headers)
    if isinstance(exc, ApiError):
        return render(exc.status, exc.code, exc.message, path, exc.headers, exc.order)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        headers = dict(exc.headers or {})
        message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail)).format(
            method=request.method, allow=headers.get("Allow", "")
        )
        return render(exc.status_code, code, message, path, headers)
    if isinstance(exc, RedisError):
        log.warning("event=redis_unavailable path=%s error=%r", path, str(exc))
        return render(503, "SERVICE_UNAVAILABLE", "the reservation store is unreachable, try again", path)
    log.error("event=unhandled_error method=%s path=%s", request.method, path, exc_info=exc)
    return render(500, "INTERNAL_ERROR", "unexpected error; it has been logged", path)
