"""Reading a JSON request body: the content type, the size limit (also without Content-Length) and the
Struct it must decode into. Every failure is a clear 4xx; nothing reaches the engine half-checked."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from flashsale.api.errors import ApiError, validation_error
from starlette.requests import Request

T = TypeVar("T")


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(into: type[Any]) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(into)
    if decoder is None:
        decoder = _decoders[into] = msgspec.json.Decoder(into)
    return decoder


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"the request body is larger than {limit} bytes")


async def read_json(request: Request, into: type[T], limit: int) -> T:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        message = "the request body must be JSON (Content-Type: application/json)"
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", message)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise validation_error("Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise _too_large(limit)
    # Counted while reading: a chunked body has no Content-Length to trust.
    # Read from ASGI's receive directly (the one reader of this request's body): no async generator.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            # The client went away mid-body, or was cut off as too slow (api.server): not a server error.
            raise ApiError(408, "REQUEST_TIMEOUT", "the request body did not arrive in full")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        decoded: T = _decoder(into).decode(body)
    except msgspec.ValidationError:
        return _with_integral_numbers(body, into)
    except msgspec.DecodeError as error:
        raise validation_error(f"malformed JSON: {error}") from None
    return decoded


def _with_integral_numbers(body: bytes, into: type[T]) -> T:
    """The body again, with ``1.0`` taken as the integer ``1``: JSON Schema (the OpenAPI document) counts
    a number without a fraction as an integer, msgspec's typed decoder does not. Only after the one-pass
    decode failed, so a well-formed request never pays for it; ``1.5`` and ``"1"`` stay refused."""
    try:
        return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), into)
    except msgspec.ValidationError as error:
        raise validation_error(str(error)) from None
    except msgspec.DecodeError as error:  # '0x' fails the type before the trailing bytes
        raise validation_error(f"malformed JSON: {error}") from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value
