"""Rendering every error as ``{"error": code, "detail": message, "request_id": id}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bourse.api.openapi import install_openapi
from bourse.dberrors import transient_failure
from bourse.errors import BourseError, is_field_error_code

REQUEST_ID_SCOPE_KEY = "bourse.request_id"

# Stable codes for the errors the framework itself raises.
HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def error_body(code: str, detail: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, "request_id": request_id, **extra}


def error_response(
    status: int,
    code: str,
    detail: str,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(error_body(code, detail, request_id, **extra), status_code=status, headers=headers)


def request_id_of(request: Request) -> str | None:
    """The request's X-Request-ID, as the middleware validated or generated it."""
    value = request.scope.get(REQUEST_ID_SCOPE_KEY)
    return value if isinstance(value, str) else None


async def _bourse_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, BourseError):
        raise exc
    return error_response(exc.status_code, exc.code, exc.detail, request_id_of(request), headers=exc.headers or None)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database error that reached the app outside a transactional route's own handling:
    a transient one is the retryable 503 (see :mod:`bourse.dberrors`), anything else a 500."""
    unavailable = transient_failure(exc, source="request") if isinstance(exc, DBAPIError) else None
    if unavailable is None:
        raise exc
    return await _bourse_error(request, unavailable)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    code = HTTP_STATUS_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == HTTPStatus.NOT_FOUND and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"No route for {request.method} {request.url.path}"
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, detail, request_id_of(request), headers=exc.headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    # Inputs are never echoed back: they may hold passwords or card data.
    errors = [
        {"loc": _location(tuple(err.get("loc", ()))), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    if any(err["type"] == "json_invalid" for err in errors):
        return error_response(422, "invalid_json", "The request body is not valid JSON", request_id_of(request))
    detail = "; ".join(f"{err['loc']}: {err['msg']}" for err in errors) or "Invalid request"
    # A domain's own field error (e.g. amount_must_be_string) is the top-level code.
    code = next((err["type"] for err in errors if is_field_error_code(err["type"])), "validation_error")
    return error_response(422, code, detail, request_id_of(request), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as above, and document exactly that in the OpenAPI schema."""
    install_openapi(app)
    app.add_exception_handler(BourseError, _bourse_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
