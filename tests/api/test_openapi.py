"""The OpenAPI schema tells the truth about errors: Bourse's own error body, every status
an operation can answer and its codes, and no trace of FastAPI's HTTPValidationError.

``make schemathesis`` holds the running server to this schema; these tests hold the
schema itself, and check a few real error responses against it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from fastapi import routing
from fastapi.testclient import TestClient

from bourse.api.openapi import RETRYABLE_CODES
from bourse.app import create_app
from bourse.db import Database
from bourse.errors import declared_refusals
from bourse.identity.models import Role
from bourse.inputs import INT64_MAX
from bourse.settings import Settings
from tests.support.auth import bearer, make_user
from tests.support.services import make_settings


def within_64_bits(bound: object) -> bool:
    # FastAPI writes the bounds of a body's fields as JSON numbers with a fraction (1.0).
    exact = isinstance(bound, int) or (isinstance(bound, float) and bound.is_integer())
    return exact and -INT64_MAX - 1 <= bound <= INT64_MAX  # type: ignore[operator]


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # Building the schema reads no database.
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'unused.db'}"
    document: dict[str, Any] = create_app(make_settings(url)).openapi()
    return document


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def error_codes(operation: dict[str, Any], status: int) -> set[str]:
    answer = operation["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}
    return set(schema["allOf"][1]["properties"]["error"]["enum"])


def test_the_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(schema).validate()  # the OpenAPI 3.1 meta-schema
    for name, component in schema["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), name


def test_no_operation_documents_fastapi_validation_error(schema: dict[str, Any]) -> None:
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text
    assert "#/components/schemas/ValidationError" not in text
    assert "ValidationError" not in schema["components"]["schemas"]


def test_every_error_response_is_the_error_body_with_its_codes(schema: dict[str, Any]) -> None:
    assert schema["components"]["schemas"]["Error"]["required"] == ["error", "detail", "request_id"]
    count = 0
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        assert any(status.startswith("2") for status in responses), (method, path)
        for status in responses:
            if status[0] in "45":
                assert error_codes(operation, int(status)), (method, path, status)
                count += 1
        # What any request may meet.
        assert error_codes(operation, 413) == {"payload_too_large"}, (method, path)
        assert error_codes(operation, 500) == {"internal_error"}, (method, path)
        assert set(RETRYABLE_CODES) <= error_codes(operation, 503), (method, path)
        assert responses["503"]["headers"]["Retry-After"]["required"] is True
        inputs = operation.get("parameters") or operation.get("requestBody")
        if inputs:
            assert {"validation_error", "control_character"} <= error_codes(operation, 422), (method, path)
        if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
            assert "not_found" in error_codes(operation, 404), (method, path)
        if "application/json" in operation.get("requestBody", {}).get("content", {}) and not path.endswith("/webhook"):
            assert error_codes(operation, 415) == {"unsupported_media_type"}, (method, path)
            assert "invalid_json" in error_codes(operation, 422), (method, path)
    assert count > 300


def test_every_refusal_a_route_declares_is_documented(schema: dict[str, Any], tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}"))
    checked = 0
    for context in routing.iter_route_contexts(app.routes):
        if not isinstance(context.original_route, routing.APIRoute) or not context.include_in_schema:
            continue
        calls = []
        pending = [context.dependant]
        while pending:
            dependant = pending.pop()
            calls.append(dependant.call)
            pending.extend(dependant.dependencies)
        assert context.methods is not None
        for method in context.methods:
            operation = schema["paths"][context.path_format][method.lower()]
            for call in calls:
                for error in declared_refusals(call):
                    assert error.code in error_codes(operation, error.status_code), (method, context.path_format)
                    checked += 1
    assert checked > 100


def test_the_operations_that_were_documented_loosely_now_list_their_codes(schema: dict[str, Any]) -> None:
    login = schema["paths"]["/api/v1/auth/login"]["post"]
    assert error_codes(login, 401) == {"invalid_credentials", "totp_required", "invalid_totp_code"}
    assert error_codes(login, 429) == {"too_many_attempts"}
    assert login["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert "throttle_unavailable" in error_codes(login, 503)
    order = schema["paths"]["/api/v1/orders/{order_id}"]["delete"]
    assert error_codes(order, 404) == {"not_found", "order_not_found"}
    assert error_codes(order, 409) == {"order_not_open"}
    assert error_codes(order, 401) == {"invalid_token"}
    assert "WWW-Authenticate" in order["responses"]["401"]["headers"]
    candles = schema["paths"]["/api/v1/instruments/{symbol}/candles"]["get"]
    assert {"invalid_interval", "time_out_of_range"} <= error_codes(candles, 422)
    assert "401" not in candles["responses"]  # public
    deposit = schema["paths"]["/api/v1/deposits"]["post"]
    assert error_codes(deposit, 502) == {"psp_error", "psp_refused"}
    assert "psp_unavailable" in error_codes(deposit, 503)


def _integer_schemas(node: Any, components: dict[str, Any], seen: set[str]) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _integer_schemas(item, components, seen)
    elif isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference not in seen:
            seen.add(reference)
            yield from _integer_schemas(components[reference.rsplit("/", 1)[-1]], components, seen)
        if node.get("type") == "integer":
            yield node
        for key, value in node.items():
            if key not in {"$ref", "default", "examples"}:
                yield from _integer_schemas(value, components, seen)


def test_every_integer_a_client_sends_is_bounded_to_64_bits(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    found = 0
    for path, method, operation in operations(schema):
        inputs = [parameter["schema"] for parameter in operation.get("parameters", [])]
        inputs.extend(media["schema"] for media in operation.get("requestBody", {}).get("content", {}).values())
        for integer in _integer_schemas(inputs, components, set()):
            assert within_64_bits(integer.get("minimum")), (method, path, integer)
            assert within_64_bits(integer.get("maximum")), (method, path, integer)
            found += 1
    assert found > 20


def validator_for(schema: dict[str, Any], path: str, method: str, status: int) -> jsonschema_rs.Validator:
    body = schema["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    # The components ride along, so that "#/components/..." resolves within the document.
    return jsonschema_rs.validator_for({**body, "components": schema["components"]})


def test_real_error_responses_match_the_schema(
    client: TestClient, schema: dict[str, Any], settings: Settings, database: Database
) -> None:
    signed_in = bearer(settings, make_user(database))
    cases = [
        ("/api/v1/auth/login", "post", client.post("/api/v1/auth/login", json={"email": "a\x00@b.c", "password": "x"})),
        (
            "/api/v1/auth/login",
            "post",
            client.post(
                "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "correct horse battery"}
            ),
        ),
        (
            "/api/v1/auth/login",
            "post",
            client.post("/api/v1/auth/login", content=b"{", headers={"Content-Type": "application/json"}),
        ),
        (
            "/api/v1/auth/login",
            "post",
            client.post("/api/v1/auth/login", content=b"x", headers={"Content-Type": "text/plain"}),
        ),
        ("/api/v1/orders/{order_id}", "get", client.get("/api/v1/orders/1")),
        ("/api/v1/orders/{order_id}", "get", client.get(f"/api/v1/orders/{INT64_MAX + 1}", headers=signed_in)),
        ("/api/v1/instruments/{symbol}/candles", "get", client.get("/api/v1/instruments/NO-SUCH/candles")),
        (
            "/api/v1/instruments/{symbol}/candles",
            "get",
            client.get("/api/v1/instruments/BTC-USD/candles?end=0001-01-01"),
        ),
        ("/api/v1/instruments/{symbol}/book", "get", client.get("/api/v1/instruments/a%2Fb/book")),
    ]
    seen = set()
    for path, method, response in cases:
        assert str(response.status_code) in schema["paths"][path][method]["responses"], (path, response.text)
        validator_for(schema, path, method, response.status_code).validate(response.json())
        seen.add((response.status_code, response.json()["error"]))
    assert seen == {
        (422, "control_character"),
        (401, "invalid_credentials"),
        (422, "invalid_json"),
        (415, "unsupported_media_type"),
        (401, "invalid_token"),
        (422, "validation_error"),
        (404, "unknown_instrument"),
        (422, "time_out_of_range"),
        (404, "not_found"),
    }
    # The body names a code the schema does not list for that status: the check bites.
    with pytest.raises(jsonschema_rs.ValidationError):
        validator_for(schema, "/api/v1/orders/{order_id}", "get", 404).validate(
            {"error": "unknown_instrument", "detail": "x", "request_id": None}
        )


def test_a_field_type_s_own_codes_are_documented_where_it_is_taken(
    client: TestClient, schema: dict[str, Any], settings: Settings, database: Database
) -> None:
    """Found by schemathesis: an amount that is not text in a per-lot plan answered amount_invalid,
    which the plan operation did not list (the amount type's own codes are now derived)."""
    admin = bearer(settings, make_user(database, Role.admin))
    ib = make_user(database, Role.ib)
    path = "/api/v1/admin/ib/{ib_user_id}/plan"
    response = client.put(
        f"/api/v1/admin/ib/{ib.id}/plan", headers=admin, json={"kind": "per_lot", "amounts": {"BTC-USD": {}}}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "amount_invalid"
    validator_for(schema, path, "put", 422).validate(response.json())
    response = client.put(
        f"/api/v1/admin/ib/{ib.id}/plan", headers=admin, json={"kind": "per_lot", "amounts": {"BTC-USD": 2.5}}
    )
    assert response.json()["error"] == "amount_must_be_string"
    validator_for(schema, path, "put", 422).validate(response.json())
    deposits = schema["paths"]["/api/v1/deposits"]["get"]
    assert "time_out_of_range" in error_codes(deposits, 422)
    assert "amount_invalid" not in error_codes(deposits, 422)
    assert "time_out_of_range" not in error_codes(schema["paths"]["/api/v1/auth/login"]["post"], 422)
