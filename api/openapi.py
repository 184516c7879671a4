"""The OpenAPI document, built from ``api.routes.ENDPOINTS`` and the msgspec Structs they name: the
schemas are ``msgspec.json.schema_components`` of the very types that decode requests and encode answers."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from flashsale.api.routes import Endpoint
from flashsale.api.schemas import ErrorBody

_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{name}"

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Invalid input (VALIDATION_ERROR, INVALID_ARGUMENT, INVALID_QUANTITY) or OUT_OF_STOCK",
    401: "Missing, malformed or expired bearer token",
    402: "Payment declined (PAYMENT_DECLINED); the FAILED order is in `order`",
    403: "FORBIDDEN (another user's, or not an admin) or SALE_NOT_ACTIVE",
    404: "NOT_FOUND",
    409: "ALREADY_RESERVED, ALREADY_PURCHASED, CHECKOUT_IN_PROGRESS or INVALID_STATE",
    410: "RESERVATION_EXPIRED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE (send application/json)",
    429: "RATE_LIMITED (see Retry-After)",
    502: "PAYMENT_GATEWAY_ERROR",
    503: "SERVICE_UNAVAILABLE: Redis unreachable",
}


def build(endpoints: list[Endpoint], *, title: str = "flashsale", version: str = "1") -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for endpoint in endpoints:
        types += [t for t in (endpoint.body, endpoint.returns) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(_key, types), schemas, strict=True))
    error = schema_of[_key(ErrorBody)]

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {"summary": endpoint.summary, "operationId": endpoint.handler.__name__}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(endpoint.path)
        ]
        if endpoint.method in ("POST", "PUT") and endpoint.body is not None:
            parameters.append(
                {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
            )
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[_key(endpoint.body)]}},
            }
        if parameters:
            operation["parameters"] = parameters
        if endpoint.access != "public":
            operation["security"] = [{"bearer": []}]
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(endpoint.status, "OK")}
        if endpoint.returns is not None:
            ok["content"] = {"application/json": {"schema": schema_of[_key(endpoint.returns)]}}
        responses: dict[str, Any] = {str(endpoint.status): ok}
        for status in endpoint.errors:
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": error}},
            }
        operation["responses"] = responses
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Money is a decimal string in the major unit; times are RFC 3339 UTC.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _key(t: Any) -> str:
    return repr(t)
