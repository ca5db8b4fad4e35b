"""The OpenAPI schema, with the errors Bourse really sends.

FastAPI documents every operation's errors as its own ``HTTPValidationError`` (whose
``detail`` is an array). Bourse answers every error with one body,
``{"error": code, "detail": message, "request_id": id}`` plus ``errors`` on a 422 (see
:mod:`bourse.api.errors`). This module replaces each operation's error responses with
what that operation can really answer, per status, with the ``error`` codes of that
status as an ``enum``:

- the refusals its endpoint and every dependency it uses declare with
  :func:`bourse.errors.raises`;
- what the framework answers around any endpoint: ``413 payload_too_large`` for every
  operation; ``415 unsupported_media_type`` and ``422 invalid_json`` with a JSON body;
  ``422 validation_error`` and ``control_character`` with any parameter or body, and
  the codes its input types declare (``time_out_of_range`` for a time of
  :mod:`bourse.inputs`, ``amount_invalid`` for an amount; see
  :func:`bourse.errors.refused_with`); ``404
  not_found`` with a path parameter (one holding an encoded ``/`` matches no route);
  ``500 internal_error``;
- ``503`` with ``Retry-After`` on every operation: the retryable refusals any request
  may meet (:data:`RETRYABLE_CODES`), plus the operation's own.

It also states the text rule of :mod:`bourse.inputs` where a client reads it: every
free string a request carries (parameters and body fields, and the keys of a body's
maps) gets the :data:`TEXT_PATTERN` that excludes control characters.

Generated clients and schema checks (``make schemathesis``) then agree with the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi

from bourse.errors import FIELD_CODES_KEYWORD, BourseError, declared_refusals
from bourse.inputs import CONTROL_CHARACTER

# Refusals any request may meet, whatever its route: all are 503 with Retry-After and
# safe to retry. ``overloaded`` is admission control, ``database_busy`` no connection
# free in time, ``database_unavailable`` the database not answering, and
# ``transient_conflict`` a serialization failure or deadlock that rolled back.
RETRYABLE_CODES = (
    "database_busy",
    "database_unavailable",
    "overloaded",
    "temporarily_unavailable",
    "transient_conflict",
)

# No control character (Unicode category Cc), as bourse.inputs refuses them.
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*$"

ERROR_SCHEMA = "Error"
FIELD_ERROR_SCHEMA = "FieldError"
_REF = "#/components/schemas/"
_FASTAPI_SCHEMAS = ("HTTPValidationError", "ValidationError")
# Keywords that describe rather than constrain, and what already fixes a string's shape.
_ANNOTATIONS = frozenset({"examples", "default", "description", "title", "const", "enum"})
_FIXED_STRING = frozenset({"pattern", "format", "enum", "const"})
_WITH_RETRY_AFTER = frozenset({429, 503})
_UNAUTHORIZED = 401
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_WWW_AUTHENTICATE = {
    "description": "Bearer, with the error, when the access token is missing or not valid",
    "schema": {"type": "string"},
}

_COMPONENTS: dict[str, dict[str, Any]] = {
    ERROR_SCHEMA: {
        "title": "Error",
        "description": "Every error response. Clients branch on `error`, a stable code; `detail` is for humans "
        "and may change. Some errors add fields of their own.",
        "type": "object",
        "required": ["error", "detail", "request_id"],
        "properties": {
            "error": {"type": "string", "description": "The stable code"},
            "detail": {"type": "string", "description": "A message for humans"},
            "request_id": {"type": ["string", "null"], "description": "The X-Request-ID of the request"},
            "errors": {
                "type": "array",
                "description": "On a 422: each field that was refused",
                "items": {"$ref": _REF + FIELD_ERROR_SCHEMA},
            },
        },
    },
    FIELD_ERROR_SCHEMA: {
        "title": "FieldError",
        "description": "One refused field. Input values are never echoed back.",
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "string", "description": "Where, e.g. body.amount or query.limit"},
            "msg": {"type": "string"},
            "type": {"type": "string", "description": "What is wrong, e.g. missing or control_character"},
        },
    },
}


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi` as the app's schema, built once on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign] # FastAPI's documented way to customise the schema


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_SCHEMAS:
        components.pop(name, None)
    components.update(_COMPONENTS)
    requests: list[Any] = []
    for path, method, route in _operations(app):
        operation = schema["paths"][path][method]
        operation["responses"] = {
            **{status: answer for status, answer in operation.get("responses", {}).items() if status[:1] in "123"},
            **_error_responses(_error_codes(route, operation, components)),
        }
        requests.extend(parameter.get("schema", {}) for parameter in operation.get("parameters", []))
        requests.append(operation.get("requestBody", {}))
    _state_the_text_rule(requests, components, _referenced(schema["paths"], components, request_side=False))
    return schema


def _operations(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    for context in routing.iter_route_contexts(app.routes):
        path = context.path_format
        if not isinstance(context.original_route, routing.APIRoute) or not context.include_in_schema or path is None:
            continue
        for method in sorted(context.methods or ()):
            yield path, method.lower(), context


def _dependants(root: Dependant) -> Iterator[Dependant]:
    pending = [root]
    while pending:
        dependant = pending.pop()
        yield dependant
        pending.extend(dependant.dependencies)


def _error_codes(route: Any, operation: dict[str, Any], components: dict[str, Any]) -> dict[int, set[str]]:
    """Status code to the ``error`` codes this operation may answer with it."""
    codes: dict[int, set[str]] = {413: {"payload_too_large"}, 500: {"internal_error"}, 503: set(RETRYABLE_CODES)}

    def add(status: int, code: str) -> None:
        codes.setdefault(status, set()).add(code)

    declared: set[type[BourseError]] = set()
    for dependant in _dependants(route.dependant):
        declared.update(declared_refusals(dependant.call))
    for error in declared:
        add(error.status_code, error.code)

    parameters = operation.get("parameters", [])
    body = operation.get("requestBody")
    if any(parameter["in"] == "path" for parameter in parameters):
        add(404, "not_found")
    if body is not None and route.body_field is not None:
        add(415, "unsupported_media_type")
        add(422, "invalid_json")
    if parameters or body is not None:
        add(422, "validation_error")
        add(422, CONTROL_CHARACTER)
    for code in _field_codes([operation.get("parameters", []), body or {}], components):
        add(422, code)
    return codes


def _field_codes(roots: list[Any], components: dict[str, Any]) -> set[str]:
    """The field error codes the input types of these schemas declare (following $refs)."""
    found: set[str] = set()
    pending, seen = list(roots), set()
    while pending:
        node = pending.pop()
        name = _component_name(node)
        if name is not None and name not in seen and name in components:
            seen.add(name)
            pending.append(components[name])
        if isinstance(node, dict):
            found.update(node.get(FIELD_CODES_KEYWORD, ()))
        pending.extend(_children(node))
    return found


def _error_responses(codes: dict[int, set[str]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted(codes):
        names = sorted(codes[status])
        answer: dict[str, Any] = {
            "description": ", ".join(f"`{name}`" for name in names),
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            {"$ref": _REF + ERROR_SCHEMA},
                            {"type": "object", "properties": {"error": {"enum": names}}},
                        ]
                    }
                }
            },
        }
        headers: dict[str, Any] = {}
        if status in _WITH_RETRY_AFTER:
            headers["Retry-After"] = _RETRY_AFTER
        if status == _UNAUTHORIZED:
            headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
        if headers:
            answer["headers"] = headers
        responses[str(status)] = answer
    return responses


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, list):
        yield from node
    elif isinstance(node, dict):
        yield from (value for key, value in node.items() if key not in _ANNOTATIONS)


def _component_name(node: Any) -> str | None:
    reference = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(reference, str) and reference.startswith(_REF):
        return reference.removeprefix(_REF)
    return None


def _referenced(paths: dict[str, Any], components: dict[str, Any], *, request_side: bool) -> set[str]:
    """The components reachable from the requests (parameters, bodies) or from the responses."""
    roots: list[Any] = []
    for operation in (op for methods in paths.values() for op in methods.values()):
        if request_side:
            roots.extend([operation.get("parameters", []), operation.get("requestBody", {})])
        else:
            roots.append(operation.get("responses", {}))
    found: set[str] = set()
    pending = roots
    while pending:
        node = pending.pop()
        name = _component_name(node)
        if name is not None and name not in found and name in components:
            found.add(name)
            pending.append(components[name])
        pending.extend(_children(node))
    return found


def _state_the_text_rule(roots: list[Any], components: dict[str, Any], in_responses: set[str]) -> None:
    """Give every free string of the requests :data:`TEXT_PATTERN` (not those shared with responses)."""
    pending, seen = list(roots), set()
    while pending:
        node = pending.pop()
        name = _component_name(node)
        if name is not None and name not in seen and name in components and name not in in_responses:
            seen.add(name)
            pending.append(components[name])
        if isinstance(node, dict):
            if node.get("type") == "string" and not _FIXED_STRING.intersection(node):
                node["pattern"] = TEXT_PATTERN
            if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
                node.setdefault("propertyNames", {"pattern": TEXT_PATTERN})
        pending.extend(_children(node))
