"""The OpenAPI document, built from ``api.routes.ENDPOINTS`` and the msgspec Structs they name: the
schemas are ``msgspec.json.schema_components`` of the very types that decode requests and encode answers."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from flashsale.api.routes import IDEMPOTENCY_KEY, Endpoint
from flashsale.api.schemas import ErrorBody, Identifier
from flashsale.engine.bounds import MAX_BUCKETS
from flashsale.engine.settings import PARTITIONS

_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{name}"

# Path parameters as the engine takes them: a SKU is an Identifier; a reservation or order id is the
# engine's ENTITY_ID (engine/keys.py: kind, partition, random part; ASCII only). Anything else is
# refused (400 for a SKU, 404 for an id) without touching Redis.
_ENTITY_ID = "_(0|[1-9][0-9]{0,4})_[0-9a-zA-Z_-]{1,64}$"
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "skuId": msgspec.json.schema(Identifier),
    "reservationId": {"type": "string", "pattern": f"^rsv{_ENTITY_ID}", "examples": ["rsv_3_9f8e7d"]},
    "orderId": {"type": "string", "pattern": f"^ord{_ENTITY_ID}", "examples": ["ord_3_9f8e7d"]},
}
# The Idempotency-Key header, on the operations that honour it (the API checks api.routes.IDEMPOTENCY_KEY).
_IDEMPOTENT = {"create_reservation", "checkout"}
_IDEMPOTENCY_KEY = {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$", "examples": ["click-1"]}
# What the Structs cannot say about the values the engine takes: a restock of 0 units is refused
# (INVALID_QUANTITY); a sale's bounds are milliseconds from 0 to 10^14 (lua/load_sale.lua), so years
# 1971-4999 (1970 itself could fall before the epoch with a positive UTC offset).
_YEARS = r"^(197[1-9]|19[89][0-9]|[2-4][0-9]{3})-"
_REFINEMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("RestockRequest", "delta"): {"not": {"const": 0}},
    ("SaleRequest", "startsAt"): {"pattern": _YEARS},
    ("SaleRequest", "endsAt"): {"pattern": _YEARS},
    ("WaitingRoomRequest", "opensAt"): {"pattern": _YEARS},
}

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Invalid input (VALIDATION_ERROR, INVALID_ARGUMENT, INVALID_QUANTITY) or OUT_OF_STOCK",
    401: "Missing, malformed or expired bearer token",
    402: "Payment declined (PAYMENT_DECLINED); the FAILED order is in `order`",
    403: "FORBIDDEN (another user's, or not an admin), SALE_NOT_ACTIVE or NOT_ADMITTED (a waiting-room sale "
    "without a live admission)",
    404: "NOT_FOUND, NO_WAITING_ROOM (the sale has none) or NOT_IN_QUEUE",
    409: "ALREADY_RESERVED, ALREADY_PURCHASED, CHECKOUT_IN_PROGRESS, INVALID_STATE, QUEUE_CLOSED (sold out "
    "or ended) or QUEUE_NOT_OPEN",
    410: "RESERVATION_EXPIRED",
    413: "PAYLOAD_TOO_LARGE",
    408: "REQUEST_TIMEOUT: the body did not arrive in time (FLASHSALE_HTTP_BODY_TIMEOUT_S)",
    415: "UNSUPPORTED_MEDIA_TYPE (send application/json)",
    429: "RATE_LIMITED (see Retry-After)",
    502: "PAYMENT_GATEWAY_ERROR",
    503: "SERVICE_UNAVAILABLE: Redis unreachable or the process at its connection limit; BACKLOG_FULL: the "
    "write-behind backlog is at its memory budget; PAYMENT_PENDING (checkout): the payment is authorized but "
    "the confirm got no answer, the PENDING order is in `order` (all with Retry-After)",
}


def _follow(operation: str, **values: Any) -> dict[str, Any]:
    """An OpenAPI link: where the next call's path parameters (or, with ``body``, its body) come from."""
    body = values.pop("body", None)
    link: dict[str, Any] = {"operationId": operation}
    if values:
        link["parameters"] = values
    if body is not None:
        link["requestBody"] = body
    return link


# What a client does next with an answer (OpenAPI links; schemathesis's stateful tests walk them).
_RESERVATION = "$response.body#/id"
_SKU = "$response.body#/skuId"
_SALE_LINKS = {
    "GetProduct": _follow("get_product", skuId=_SKU),
    "Restock": _follow("restock", skuId=_SKU),
    "PauseSale": _follow("pause_sale", skuId=_SKU),
    "ResumeSale": _follow("resume_sale", skuId=_SKU),
    "Reserve": _follow("create_reservation", body={"skuId": _SKU, "quantity": 1}),
}
LINKS: dict[str, dict[str, dict[str, Any]]] = {
    "put_sale": _SALE_LINKS,
    "put_waiting_room": {
        **_SALE_LINKS,
        "JoinQueue": _follow("join_queue", skuId=_SKU),
        "QueuePosition": _follow("queue_position", skuId=_SKU),
    },
    "join_queue": {"QueuePosition": _follow("queue_position", skuId=_SKU)},
    "resume_sale": _SALE_LINKS,
    "create_reservation": {
        "GetReservation": _follow("get_reservation", reservationId=_RESERVATION),
        "ReleaseReservation": _follow("release_reservation", reservationId=_RESERVATION),
        "Checkout": _follow("checkout", body={"reservationId": _RESERVATION, "paymentMethod": "CREDIT_CARD"}),
    },
    "checkout": {
        "GetOrder": _follow("get_order", orderId="$response.body#/id"),
        "CancelOrder": _follow("cancel_order", orderId="$response.body#/id"),
        "FulfilOrder": _follow("fulfil_order", orderId="$response.body#/id"),
        "CancelAnyOrder": _follow("admin_cancel_order", orderId="$response.body#/id"),
        "GetReservation": _follow("get_reservation", reservationId="$response.body#/reservationId"),
    },
}


def build(
    endpoints: list[Endpoint], *, title: str = "flashsale", version: str = "1", partitions: int = PARTITIONS
) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for endpoint in endpoints:
        types += [t for t in (endpoint.body, endpoint.returns) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(_key, types), schemas, strict=True))
    for (component, field), refinement in _REFINEMENTS.items():
        _refine(components[component]["properties"][field], refinement)
    # Stock buckets live one per partition: at most this deployment's partition count.
    _refine(components["SaleRequest"]["properties"]["buckets"], {"maximum": min(partitions, MAX_BUCKETS)})
    error = schema_of[_key(ErrorBody)]

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {"summary": endpoint.summary, "operationId": endpoint.handler.__name__}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
            for name in _PARAM.findall(endpoint.path)
        ]
        if endpoint.handler.__name__ in _IDEMPOTENT:
            parameters.append(
                {"name": "Idempotency-Key", "in": "header", "required": False, "schema": _IDEMPOTENCY_KEY}
            )
        if endpoint.body is not None:
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
        if endpoint.handler.__name__ in LINKS:
            ok["links"] = LINKS[endpoint.handler.__name__]
        responses: dict[str, Any] = {str(endpoint.status): ok}
        for status in sorted({*endpoint.errors, *_cross_cutting(endpoint)}):
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


def _refine(schema: dict[str, Any], refinement: dict[str, Any]) -> None:
    """Adds to a property's schema; of an optional one (``anyOf`` with null), to its non-null branch."""
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    for branch in branches:
        branch.update(refinement)


def _cross_cutting(endpoint: Endpoint) -> set[int]:
    """Answers that come from how a route is reached, not from its handler: any route can meet the
    connection cap (503); a body can arrive too slowly (408); a malformed SKU in the path is refused."""
    statuses = {503}
    if endpoint.body is not None:
        statuses.add(408)
    if "{skuId}" in endpoint.path:
        statuses.add(400)
    return statuses


def _key(t: Any) -> str:
    return repr(t)
