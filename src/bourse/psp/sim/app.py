"""The simulator's HTTP API: a small Starlette app built by :func:`create_app`.

``/v1/*`` is what Bourse's connector calls; ``/checkout/*`` is the payer's
browser (no authentication, like a real hosted checkout); ``/admin/*`` is for
tests (faults, refunds, disputes, reconciliation tampering). ``/v1`` and
``/admin`` need ``Authorization: Bearer <api key>``. ``/`` says what the service
is and lists its endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bourse.logging import get_logger
from bourse.psp.sim import checkout
from bourse.psp.sim.delivery import WebhookDispatcher
from bourse.psp.sim.faults import FaultSwitchboard
from bourse.psp.sim.store import MAX_AMOUNT, TRANSACTION_TYPES, Deposit, Payout, SimError, Store, new_id

log = get_logger("bourse.psp.sim")

MAX_BODY_BYTES = 64 * 1024
_CURRENCY = re.compile(r"[A-Z]{3,5}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class SimConfig:
    api_key: str
    webhook_secret: str
    webhook_url: str
    public_url: str

    def __repr__(self) -> str:  # never show the secrets
        return f"SimConfig(webhook_url={self.webhook_url!r}, public_url={self.public_url!r})"


def error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


# --- Input validation --------------------------------------------------------------------


def _amount(value: object) -> int:
    if type(value) is not int or not 0 < value <= MAX_AMOUNT:
        raise SimError(422, "invalid_amount", f"amount must be an integer of minor units from 1 to {MAX_AMOUNT}")
    return value


def _currency(value: object) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise SimError(422, "invalid_currency", "currency must be 3 to 5 upper-case letters")
    return value


def _text(value: object, name: str, maximum: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= maximum:
        raise SimError(422, f"invalid_{name}", f"{name} must be a string of 1 to {maximum} characters")
    return value


def _http_url(value: object, name: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) and len(value) <= 2048 else None  # noqa: PLR2004
    if parts is None or parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SimError(422, f"invalid_{name}", f"{name} must be an http(s) URL of at most 2048 characters")
    return str(value)


def _date(value: object) -> dt.date:
    if isinstance(value, str) and _DATE.fullmatch(value):
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value)
    raise SimError(422, "invalid_date", "date must be a day as YYYY-MM-DD")


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise SimError(413, "body_too_large", f"The body must be at most {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except ValueError:
        raise SimError(400, "invalid_json", "The body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise SimError(400, "invalid_json", "The body must be a JSON object")
    return payload


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- The simulator -----------------------------------------------------------------------


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.store = Store()
        self.faults = FaultSwitchboard()
        self.webhooks = WebhookDispatcher(config.webhook_url, config.webhook_secret, self.faults)
        self._api_key = config.api_key.encode()

    # --- Plumbing -------------------------------------------------------------------

    def authed(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key):
                return error(401, "unauthorized", "A valid 'Authorization: Bearer <api key>' header is required")
            return await handler(request)

        return guarded

    async def _faulty(self, endpoint: str, call: Callable[[], Awaitable[Response]]) -> Response:
        """Run an API call under the ``api_failures`` fault, if one is pending for it."""
        failure = self.faults.take_api_failure(endpoint)
        if failure is None:
            return await call()
        log.info("psp_sim_api_failure", endpoint=endpoint, mode=failure.mode)
        if failure.mode == "error":
            return error(500, "internal_error", "Injected failure: nothing happened")
        response = await call()
        if failure.mode == "error_after":
            return error(500, "internal_error", "Injected failure after the call took effect")
        await asyncio.sleep(failure.timeout_seconds)
        return response

    def _idempotency_key(self, request: Request) -> str:
        key = request.headers.get("idempotency-key")
        if key is None or not 1 <= len(key) <= 255:  # noqa: PLR2004
            raise SimError(
                400, "idempotency_key_required", "An Idempotency-Key header of 1 to 255 characters is required"
            )
        return key

    async def _create(self, request: Request, scope: str, build: Callable[[dict[str, Any]], Any]) -> Response:
        key = self._idempotency_key(request)
        payload = await _json_object(request)
        build_object = build(payload)  # validates before anything is stored

        def create() -> tuple[int, dict[str, Any]]:
            obj = build_object()
            return 201, obj.to_api()

        stored, replayed = self.store.idempotent(scope, key, _fingerprint(payload), create)
        if not replayed and scope == "payouts":
            self.webhooks.spawn(self._settle_later(stored.body["id"], self.faults.current.payout_settle_seconds))
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return JSONResponse(stored.body, status_code=stored.status, headers=headers)

    # --- /v1 ------------------------------------------------------------------------

    async def create_deposit(self, request: Request) -> Response:
        def build(payload: dict[str, Any]) -> Callable[[], Deposit]:
            reference = _text(payload.get("reference"), "reference", 100)
            amount = _amount(payload.get("amount"))
            currency = _currency(payload.get("currency"))
            return_url = _http_url(payload.get("return_url"), "return_url")

            def make() -> Deposit:
                deposit_id = new_id("dep")
                checkout_url = f"{self.config.public_url}/checkout/{deposit_id}"
                return self.store.add_deposit(
                    Deposit(deposit_id, reference, amount, currency, return_url, checkout_url)
                )

            return make

        return await self._faulty("deposits", lambda: self._create(request, "deposits", build))

    async def get_deposit(self, request: Request) -> Response:
        deposit_id = request.path_params["id"]

        async def call() -> Response:
            return JSONResponse(self.store.deposit(deposit_id).to_api())

        return await self._faulty("status", call)

    async def create_payout(self, request: Request) -> Response:
        def build(payload: dict[str, Any]) -> Callable[[], Payout]:
            reference = _text(payload.get("reference"), "reference", 100)
            amount = _amount(payload.get("amount"))
            currency = _currency(payload.get("currency"))
            destination = _text(payload.get("destination"), "destination", 200)

            def make() -> Payout:
                payout = Payout(new_id("po"), reference, amount, currency, destination)
                payout.will_fail = self.faults.take_payout_failure()
                return self.store.add_payout(payout)

            return make

        return await self._faulty("payouts", lambda: self._create(request, "payouts", build))

    async def _settle_later(self, payout_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        payout = self.store.settle_payout(payout_id)
        log.info("psp_sim_payout_settled", payout_id=payout.id, status=payout.status)
        self.webhooks.emit(f"payout.{payout.status}", payout.to_api())

    async def get_payout(self, request: Request) -> Response:
        payout_id = request.path_params["id"]

        async def call() -> Response:
            return JSONResponse(self.store.payout(payout_id).to_api())

        return await self._faulty("status", call)

    async def list_transactions(self, request: Request) -> Response:
        async def call() -> Response:
            day = _date(request.query_params.get("date"))
            return JSONResponse({"object": "list", "data": self.store.transactions_on(day)})

        return await self._faulty("transactions", call)

    # --- /checkout ------------------------------------------------------------------

    async def checkout_page(self, request: Request) -> Response:
        deposit_id = request.path_params["id"]
        try:
            deposit = self.store.deposit(deposit_id)
        except SimError:
            return HTMLResponse(checkout.not_found_page(deposit_id), status_code=404)
        return HTMLResponse(checkout.checkout_page(deposit))

    async def approve(self, request: Request) -> Response:
        if self.faults.current.decline_deposits:
            return self._decide(request, approve=False, reason="card_declined")
        return self._decide(request, approve=True, reason=None)

    async def decline(self, request: Request) -> Response:
        return self._decide(request, approve=False, reason="declined_by_payer")

    def _decide(self, request: Request, *, approve: bool, reason: str | None) -> Response:
        deposit_id = request.path_params["id"]
        try:
            deposit = self.store.decide_deposit(deposit_id, approve=approve, failure_reason=reason)
        except SimError as exc:
            if exc.status == 404:  # noqa: PLR2004
                return HTMLResponse(checkout.not_found_page(deposit_id), status_code=404)
            return HTMLResponse(checkout.already_decided_page(self.store.deposit(deposit_id)), status_code=409)
        log.info("psp_sim_deposit_decided", deposit_id=deposit.id, status=deposit.status)
        self.webhooks.emit(f"deposit.{deposit.status}", deposit.to_api())
        if deposit.return_url:
            return RedirectResponse(_with_query(deposit.return_url, deposit=deposit.id, status=deposit.status), 303)
        return HTMLResponse(checkout.result_page(deposit))

    # --- /admin ---------------------------------------------------------------------

    async def get_faults(self, _: Request) -> Response:
        return JSONResponse(self.faults.current.to_api())

    async def put_faults(self, request: Request) -> Response:
        faults = self.faults.update(await _json_object(request))
        log.info("psp_sim_faults_changed", faults=faults.to_api())
        return JSONResponse(faults.to_api())

    async def reset_faults(self, _: Request) -> Response:
        return JSONResponse(self.faults.reset().to_api())

    async def list_events(self, _: Request) -> Response:
        return JSONResponse({"data": self.webhooks.events()})

    async def redeliver(self, request: Request) -> Response:
        record = await self.webhooks.redeliver(request.path_params["id"])
        return JSONResponse(record.to_api())

    async def refund(self, request: Request) -> Response:
        deposit = self.store.reverse_deposit(request.path_params["id"], kind="refund")
        self.webhooks.emit("deposit.refunded", deposit.to_api())
        return JSONResponse(deposit.to_api())

    async def dispute(self, request: Request) -> Response:
        deposit = self.store.reverse_deposit(request.path_params["id"], kind="chargeback")
        self.webhooks.emit("deposit.disputed", deposit.to_api())
        return JSONResponse(deposit.to_api())

    async def payouts_by_reference(self, request: Request) -> Response:
        reference = _text(request.query_params.get("reference"), "reference", 100)
        payouts = self.store.payouts_by_reference(reference)
        return JSONResponse({"object": "list", "data": [p.to_api() for p in payouts]})

    async def add_transaction(self, request: Request) -> Response:
        payload = await _json_object(request)
        kind = payload.get("type")
        if kind not in TRANSACTION_TYPES:
            raise SimError(422, "invalid_type", f"type must be one of {', '.join(TRANSACTION_TYPES)}")
        row = self.store.add_foreign_transaction(
            str(kind),
            _text(payload.get("reference"), "reference", 100),
            _amount(payload.get("amount")),
            _currency(payload.get("currency")),
            _date(payload.get("date")),
        )
        return JSONResponse(row.to_api(), status_code=201)

    async def tamper_transaction(self, request: Request) -> Response:
        payload = await _json_object(request)
        rows = self.store.override_amount(request.path_params["id"], _amount(payload.get("amount")))
        return JSONResponse({"object": "list", "data": rows})


async def _healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _index(routes: list[Route]) -> Handler:
    """``GET /``: what this service is and every endpoint it has, for someone who opens its address."""
    endpoints = [
        f"{method} {route.path}" for route in routes for method in sorted(route.methods or ()) if method != "HEAD"
    ]
    body = {
        "service": "bourse-psp-sim",
        "description": (
            "Bourse's built-in payment service provider simulator (test mode, state in memory): "
            "deposits with hosted checkout pages, payouts, signed webhooks, fault injection."
        ),
        "authentication": "/v1 and /admin need 'Authorization: Bearer <api key>' (BOURSE_PSP_API_KEY)",
        "endpoints": ["GET /", *endpoints],
    }

    async def index(_: Request) -> Response:
        return JSONResponse(body)

    return index


async def _sim_error(_: Request, exc: Exception) -> Response:
    if not isinstance(exc, SimError):  # pragma: no cover - registered for SimError only
        raise exc
    return error(exc.status, exc.code, exc.detail)


async def _http_error(_: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error(exc.status_code, code, str(exc.detail))


def create_app(config: SimConfig) -> Starlette:
    sim = Simulator(config)
    auth = sim.authed

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await sim.webhooks.start()
        try:
            yield
        finally:
            await sim.webhooks.stop()

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/v1/deposits", auth(sim.create_deposit), methods=["POST"]),
        Route("/v1/deposits/{id}", auth(sim.get_deposit), methods=["GET"]),
        Route("/v1/payouts", auth(sim.create_payout), methods=["POST"]),
        Route("/v1/payouts/{id}", auth(sim.get_payout), methods=["GET"]),
        Route("/v1/transactions", auth(sim.list_transactions), methods=["GET"]),
        Route("/checkout/{id}", sim.checkout_page, methods=["GET"]),
        Route("/checkout/{id}/approve", sim.approve, methods=["POST"]),
        Route("/checkout/{id}/decline", sim.decline, methods=["POST"]),
        Route("/admin/faults", auth(sim.get_faults), methods=["GET"]),
        Route("/admin/faults", auth(sim.put_faults), methods=["PUT"]),
        Route("/admin/faults", auth(sim.reset_faults), methods=["DELETE"]),
        Route("/admin/events", auth(sim.list_events), methods=["GET"]),
        Route("/admin/events/{id}/redeliver", auth(sim.redeliver), methods=["POST"]),
        Route("/admin/deposits/{id}/refund", auth(sim.refund), methods=["POST"]),
        Route("/admin/deposits/{id}/dispute", auth(sim.dispute), methods=["POST"]),
        Route("/admin/payouts", auth(sim.payouts_by_reference), methods=["GET"]),
        Route("/admin/transactions", auth(sim.add_transaction), methods=["POST"]),
        Route("/admin/transactions/{id}", auth(sim.tamper_transaction), methods=["PATCH"]),
    ]
    routes.insert(0, Route("/", _index(routes), methods=["GET"]))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={SimError: _sim_error, HTTPException: _http_error},
    )
    app.state.simulator = sim
    return app
