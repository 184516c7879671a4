"""How uvicorn serves the API: its HTTP protocol with read deadlines and a cap on connections.

uvicorn times out only the idle gap *between* requests (``timeout_keep_alive``, reset by every byte): a
client that opens a connection and sends nothing, or trickles its headers or its body a byte at a time,
holds the connection, and its slot, for ever (slowloris). ASGI middleware cannot help: it runs once the
head is parsed. So ``GuardedHttpProtocol`` (uvicorn's httptools protocol) keeps one deadline per request:

- the head (request line and headers) must arrive within ``http_header_timeout_s`` of the connection
  opening or of the request's first byte; past it the connection is closed (nothing to answer: the
  request was never understood);
- the body must arrive within ``http_body_timeout_s`` of the head; past it the client gets
  ``408 REQUEST_TIMEOUT`` in the error shape and the connection is closed.

Neither clock is reset by a byte, and neither runs while the app works on an answer: a slow answer is
not a slow client.

``http_max_connections`` caps a process's open connections (and requests in flight): a request beyond it
is answered ``503 SERVICE_UNAVAILABLE`` in the error shape with ``Connection: close``. That is uvicorn's
``limit_concurrency`` check, made here because uvicorn answers it with a plain-text body and counts the
asking connection against the cap (a cap of N served N - 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from flashsale.api.schemas import ErrorBody
from flashsale.engine.settings import Settings
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("flashsale.api")


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.http_header_timeout_s, settings.http_body_timeout_s, settings.http_max_connections
        )


def _error(status: int, code: str, message: str, path: str) -> bytes:
    body = ErrorBody(error=code, message=message, status=status, path=path, timestamp=datetime.now(UTC))
    return msgspec.json.encode(body)


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    body = _error(
        503, "SERVICE_UNAVAILABLE", "the server is at its connection limit, try again", scope["path"]
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request and a connection cap."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None

    # -- the deadline -----------------------------------------------------------------------------------
    def _arm(self, seconds: float, on_expiry: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("event=slow_client_cut phase=headers client=%s", _peer(self.client))
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        log.info("event=slow_client_cut phase=body client=%s path=%s", _peer(self.client), self.scope["path"])
        # Answer only when nothing else is on the wire: no answer begun, no pipelined request ahead.
        if cycle is not None and not cycle.response_started and not self.pipeline:
            message = f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
            body = _error(408, "REQUEST_TIMEOUT", message, self.scope["path"])
            head = (
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            self.transport.write(head + body)
        if cycle is not None:  # the app, still waiting for the body, sees the client gone and stays silent
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    # -- uvicorn's protocol hooks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive clock starts only after a first answer: a silent new connection has none.
        self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def on_headers_complete(self) -> None:
        limit = self.limits.max_connections
        if len(self.connections) > limit or len(self.tasks) >= limit:
            log.warning(
                "event=over_capacity connections=%d requests=%d", len(self.connections), len(self.tasks)
            )
            app, self.app = self.app, _over_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # The body's clock; a request without one completes at once and disarms it.
        self._arm(self.limits.body_timeout_s, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection leaves this protocol
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``uvicorn.run`` / ``uvicorn.Config`` need for this API, besides the app, host and port."""
    return {
        # A partial of a module-level class: it pickles into `--workers` processes.
        "http": functools.partial(GuardedHttpProtocol, limits=Limits.of(settings)),
        "loop": "uvloop",
        "backlog": 4096,
        # The API reads no client address (the user comes from the token, the rate limit is per user), so
        # no X-Forwarded-For rewriting layer on every request, and no "server: uvicorn" header to send.
        "proxy_headers": False,
        "server_header": False,
    }
