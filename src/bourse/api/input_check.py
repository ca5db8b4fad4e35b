"""Refusing control characters in a request, before its endpoint runs.

One check for every route built with :func:`bourse.api.routing.router`: each path
parameter, each query and header parameter the route declares (its dependencies'
included), and every string and object key of its JSON body. A control character
anywhere is ``422 control_character``, with each offending field in ``errors``
(``path.symbol``, ``query.connector``, ``header.idempotency-key``, ``body.email``).
Nothing is stripped: a value is used exactly as sent, or refused. See
:mod:`bourse.inputs` for why.

The JSON body is decoded here once (the framework reuses the decoded document), so a
body that does not decode at all, or that is not UTF-8, is ``422 invalid_json``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from bourse.inputs import CONTROL_CHARACTER, Location, control_characters, has_control_character

_MESSAGE = "Control characters (such as NUL, tabs or line breaks) are not allowed"


def _declared(dependant: Dependant) -> tuple[list[str], list[str]]:
    """The query and header parameter names a route reads, its dependencies' included."""
    query: list[str] = []
    headers: list[str] = []
    pending = [dependant]
    while pending:
        current = pending.pop()
        query.extend(field.alias for field in current.query_params if field.alias not in query)
        headers.extend(field.alias.lower() for field in current.header_params if field.alias.lower() not in headers)
        pending.extend(current.dependencies)
    return query, headers


class InputCheck:
    """The check of one route; call it with each request."""

    def __init__(self, route: APIRoute) -> None:
        self.query, self.headers = _declared(route.dependant)
        self.json_body = route.body_field is not None

    async def __call__(self, request: Request) -> None:
        found: list[Location] = [
            ("path", name)
            for name, value in request.path_params.items()
            if isinstance(value, str) and has_control_character(value)
        ]
        found.extend(
            ("query", name)
            for name in self.query
            if any(has_control_character(value) for value in request.query_params.getlist(name))
        )
        found.extend(
            ("header", name)
            for name in self.headers
            if any(has_control_character(value) for value in request.headers.getlist(name))
        )
        if self.json_body and await request.body():
            found.extend(control_characters(await _document(request), ("body",)))
        if found:
            raise RequestValidationError(
                [{"type": CONTROL_CHARACTER, "loc": location, "msg": _MESSAGE, "input": None} for location in found]
            )


async def _document(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, or nested beyond what the decoder takes.
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": None}]
        ) from None
