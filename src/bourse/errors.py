"""The error base class every refusal in Bourse derives from, and one class per status.

An error carries its HTTP status and a stable, machine-readable code. Services
raise these; the API renders them as ``{"error": code, "detail": message,
"request_id": ...}``. Services never import FastAPI to do so.

The status has one home: each refusal derives from the class of its status
(:class:`NotFound`, :class:`Conflict`, :class:`Unprocessable`, ...) and names
only its own code. A domain's own base class (``IdentityError``) comes second::

    class HoldNotFound(NotFound):
        code = "hold_not_found"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import ClassVar, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class BourseError(Exception):
    """Base class: a refusal with a stable code and an HTTP status.

    ``headers`` are sent with the error response (``Retry-After``, ``WWW-Authenticate``).
    """

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.detail = detail or self.default_detail()
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.detail)

    @classmethod
    def default_detail(cls) -> str:
        return cls.code.replace("_", " ").capitalize()


class BadRequest(BourseError):
    status_code = 400
    code = "bad_request"


class Unauthorized(BourseError):
    status_code = 401
    code = "unauthorized"


class Forbidden(BourseError):
    status_code = 403
    code = "forbidden"


class NotFound(BourseError):
    status_code = 404
    code = "not_found"


class Conflict(BourseError):
    status_code = 409
    code = "conflict"


class Unprocessable(BourseError):
    """Input the schema accepts but the domain finds invalid (an unknown asset, a price off tick)."""

    status_code = 422
    code = "unprocessable"


class TooManyRequests(BourseError):
    status_code = 429
    code = "too_many_requests"


class BadGateway(BourseError):
    """A provider we called failed or refused."""

    status_code = 502
    code = "bad_gateway"


class TemporarilyUnavailable(BourseError):
    """A failure that is safe to retry: ``503`` with ``Retry-After``.

    Nothing was written. The client may send the same request again after
    ``retry_after`` seconds, with the same ``Idempotency-Key`` where the endpoint
    takes one, and it cannot move money twice. Subclasses name the cause.
    """

    status_code = 503
    code = "temporarily_unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(detail, headers={"Retry-After": str(self.retry_after)})


_REFUSALS_ATTRIBUTE = "__bourse_refusals__"


def raises(*errors: type[BourseError]) -> Callable[[F], F]:
    """Declare the refusals an endpoint or a dependency may raise; returns the function unchanged.

    The OpenAPI schema documents, for each operation, the codes declared by its
    endpoint and by every dependency it uses (see :mod:`bourse.api.openapi`), so a
    client knows each status and code it may get. A class stands for itself only:
    use :func:`family` for a base class and all its subclasses.
    """

    def declare(function: F) -> F:
        setattr(function, _REFUSALS_ATTRIBUTE, (*declared_refusals(function), *errors))
        return function

    return declare


def declared_refusals(function: object) -> tuple[type[BourseError], ...]:
    """What :func:`raises` declared on ``function`` (nothing if it declared nothing)."""
    # A wrapper (functools.wraps) declares what the function it wraps declared.
    declared: tuple[type[BourseError], ...] = getattr(inspect.unwrap(function), _REFUSALS_ATTRIBUTE, ())  # type: ignore[arg-type]
    return declared


def family(error: type[BourseError]) -> tuple[type[BourseError], ...]:
    """``error`` and every subclass of it defined so far, for :func:`raises`."""
    found: list[type[BourseError]] = [error]
    for sub in error.__subclasses__():
        found.extend(item for item in family(sub) if item not in found)
    return tuple(found)


# Pydantic error types that are reported as their own top-level error code
# rather than the generic ``validation_error`` (e.g. ``amount_must_be_string``).
_FIELD_ERROR_CODES: set[str] = set()


def field_error_code(code: str) -> str:
    """Declare a custom pydantic error type as a stable API error code; returns it."""
    _FIELD_ERROR_CODES.add(code)
    return code


# The JSON-schema keyword that names the field error codes a type's validator may give
# (422), so that the OpenAPI schema lists them for every operation taking such a field.
FIELD_CODES_KEYWORD = "x-error-codes"


def refused_with(*codes: str) -> dict[str, list[str]]:
    """``json_schema_extra`` for a field type whose validator raises ``codes`` (see above)."""
    return {FIELD_CODES_KEYWORD: sorted(codes)}


def is_field_error_code(code: str) -> bool:
    return code in _FIELD_ERROR_CODES
