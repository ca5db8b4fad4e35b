"""Request context: request id, access log, metrics, and the last-resort 500.

A pure ASGI middleware, outermost in the application's own stack. It

- keeps a valid incoming ``X-Request-ID`` or generates one, echoes it in the
  response, and binds it into every log line written while serving the request;
- refuses a body over the limit with 413: a declared Content-Length before any
  of the body is read, a streamed (chunked) body as soon as it passes the limit;
- admits at most ``BOURSE_HTTP_MAX_IN_FLIGHT`` API requests at once and refuses
  the rest at once with ``503 overloaded`` and ``Retry-After`` (probes and metrics
  are always admitted; see :mod:`bourse.api.capacity`);
- counts requests in flight, by route template and status, and times them;
- writes one access-log line: method, route template, status, duration. Bodies,
  query strings and headers such as Authorization or Cookie are never logged;
- turns an unhandled exception into a JSON 500 that still carries the request id.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import TypeGuard

import structlog
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bourse.api.capacity import Admission
from bourse.api.errors import REQUEST_ID_SCOPE_KEY, error_body
from bourse.logging import get_logger
from bourse.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, HTTP_SHED

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
UNMATCHED_ROUTE = "<unmatched>"

log = get_logger("bourse.http")


def valid_request_id(value: str | None) -> TypeGuard[str]:
    return value is not None and _VALID_REQUEST_ID.match(value) is not None


def route_template(scope: Scope) -> str:
    """The matched route's template, never the raw path (which would explode label cardinality)."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Plain Starlette routes (the OpenAPI document and docs page) do not record themselves.
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if endpoint is not None and getattr(route, "endpoint", None) is endpoint:
            route_path = getattr(route, "path", None)
            if isinstance(route_path, str):
                return route_path
    return UNMATCHED_ROUTE


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when the body passes the limit; FastAPI lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes", {"Connection": "close"})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, admission: Admission) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get(REQUEST_ID_HEADER)
        request_id = incoming if valid_request_id(incoming) else uuid.uuid4().hex
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        exchange = _Exchange(request_id, receive, send, self.max_body_bytes)

        exempt = scope["path"] in Admission.EXEMPT
        if not exempt and not await self.admission.enter(scope.get("client")):
            # Refused before any work: no access-log line (Admission logs a summary).
            HTTP_SHED.inc()
            HTTP_REQUESTS.labels(scope["method"], UNMATCHED_ROUTE, "503").inc()
            await _shed(request_id, self.admission.retry_after, send)
            return
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        HTTP_IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            await self._serve(scope, headers, exchange)
        finally:
            if not exempt:
                self.admission.leave()
            HTTP_IN_FLIGHT.dec()
            self._record(scope, exchange.status, time.perf_counter() - start)
            structlog.contextvars.clear_contextvars()

    async def _serve(self, scope: Scope, headers: Headers, exchange: _Exchange) -> None:
        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                await exchange.respond_error(scope, BodyTooLarge(self.max_body_bytes))
                return
            await self.app(scope, exchange.receive, exchange.send)
        except BodyTooLarge as exc:
            if exchange.started:
                raise
            await exchange.respond_error(scope, exc)
        except Exception:
            log.exception("unhandled_error", method=scope["method"], route=route_template(scope))
            if exchange.started:
                raise
            await exchange.respond(scope, 500, "internal_error", "An unexpected error occurred")

    @staticmethod
    def _record(scope: Scope, status: int, duration: float) -> None:
        method: str = scope["method"]
        route = route_template(scope)
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_DURATION.labels(method, route).observe(duration)
        log.info("http_request", method=method, route=route, status=status, duration_ms=round(duration * 1000, 3))


async def _shed(request_id: str, retry_after: int, send: Send) -> None:
    """The ``503 overloaded`` answer, written with as little work as possible: while
    shedding, every microsecond spent here is taken from the requests admitted."""
    body = json.dumps(
        error_body("overloaded", "The server is at capacity; retry shortly", request_id), separators=(",", ":")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", str(retry_after).encode()),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Exchange:
    """One request's receive/send pair: counts the body, tags the response."""

    def __init__(self, request_id: str, receive: Receive, send: Send, max_body_bytes: int) -> None:
        self.request_id = request_id
        self._receive = receive
        self._send = send
        self._max_body_bytes = max_body_bytes
        self._received = 0
        self.status = 500
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._max_body_bytes:
                raise BodyTooLarge(self._max_body_bytes)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            MutableHeaders(scope=message)[REQUEST_ID_HEADER] = self.request_id
        await self._send(message)

    async def respond(
        self, scope: Scope, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        response = JSONResponse(error_body(code, detail, self.request_id), status_code=status, headers=headers)
        await response(scope, self._receive, self.send)

    async def respond_error(self, scope: Scope, exc: BodyTooLarge) -> None:
        await self.respond(scope, exc.status_code, "payload_too_large", str(exc.detail), headers=exc.headers)
