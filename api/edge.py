"""The one ASGI layer between uvicorn and the router: it times every request and turns every exception into
the error shape.

Starlette stacks ServerErrorMiddleware and ExceptionMiddleware around the router, and the API added its
own timer and last-resort handler: four coroutine frames that every resumption of a request (each Redis
answer, each ``send``) walks through, and four wrappers of ``send``, on a request whose own work is a few
dozen microseconds. ``App`` (api.app) builds its stack as this layer around the router instead, and every
exception, expected (a refusal, a 404, Redis down) or not (a bug: 500, logged once with its traceback),
meets ``errors.error_response`` here.
"""

from __future__ import annotations

import time

from flashsale.api.errors import error_response
from flashsale.api.metrics import ApiMetrics
from prometheus_client.metrics import Histogram
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Methods outside these share one label: a client must not create a series per method it invents.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Edge:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.histogram = metrics.request_seconds
        # (method, route template, status) -> its histogram child: labels() takes a lock and builds a key.
        self.series: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            if status:  # too late for a clean answer; the server closes the connection
                raise
            response = await error_response(Request(scope), exc)
            await response(scope, receive, send_status)
        finally:
            self._observe(scope, status or 500, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = scope.get("route")
        # Unmatched paths share one label: a scanner must not create a series per URL it tries.
        template = (getattr(route, "path", None) or "/") if route is not None else "unmatched"
        key = (method, template, status)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = self.histogram.labels(method, template, str(status))
        series.observe(seconds)
