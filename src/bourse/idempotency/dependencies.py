"""The ``Idempotent`` dependency money-moving endpoints take.

An endpoint hands its validated body and a function producing its result to
:meth:`IdempotentRequest.run`; the dependency replays, refuses or runs it and
stores the response in the request's transaction. See
:mod:`bourse.idempotency.service` for the rules.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession
from bourse.errors import raises
from bourse.idempotency import errors, service
from bourse.identity.dependencies import CurrentPrincipal
from bourse.settings import Settings

REPLAYED_HEADER = "Idempotent-Replayed"
# The ledger's own idempotency keys are at most this long (journal_entries.idempotency_key).
LEDGER_KEY_MAX = 255


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    session: Session
    request: Request
    user_id: uuid.UUID
    key: str
    ttl: timedelta

    def ledger_key(self, operation: str) -> str:
        """The ledger's idempotency key for this request: ``operation:user:key``.

        The ledger's keys are at most 255 characters, as the client's key may be on its
        own; a key that would not fit with the rest is replaced by its SHA-256, so every
        valid key maps to one ledger key, always the same.
        """
        scoped = f"{operation}:{self.user_id}:{self.key}"
        if len(scoped) <= LEDGER_KEY_MAX:
            return scoped
        return f"{operation}:{self.user_id}:sha256:{hashlib.sha256(self.key.encode()).hexdigest()}"

    def run(self, payload: BaseModel, produce: Callable[[], Any], *, status_code: int = 200) -> JSONResponse:
        """Replay the stored response for this key, or produce, store and return a new one."""
        request_fingerprint = service.fingerprint(
            self.request.method, self.request.url.path, payload.model_dump(mode="json")
        )
        stored = service.begin(
            self.session, user_id=self.user_id, key=self.key, request_fingerprint=request_fingerprint
        )
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status, headers={REPLAYED_HEADER: "true"})
        body = jsonable_encoder(produce())
        service.complete(
            self.session,
            user_id=self.user_id,
            key=self.key,
            request_fingerprint=request_fingerprint,
            status=status_code,
            body=body,
            ttl=self.ttl,
        )
        return JSONResponse(body, status_code=status_code, headers={REPLAYED_HEADER: "false"})


# The key is checked here; the replay, the refusal of a reused key and of one still
# in flight come from IdempotentRequest.run.
@raises(
    errors.IdempotencyKeyRequired,
    errors.IdempotencyKeyInvalid,
    errors.IdempotencyKeyReused,
    errors.IdempotencyInProgress,
)
async def _idempotent_request(
    request: Request,
    session: DbSession,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="A unique key per operation (e.g. a UUID). Retrying with the same key and body "
            "replays the first response instead of moving money again.",
            # The key's grammar, for clients; check_key() enforces it with its own codes.
            json_schema_extra={"pattern": "^[!-~]{1,255}$"},
        ),
    ] = None,
) -> IdempotentRequest:
    settings: Settings = request.app.state.settings
    return IdempotentRequest(
        session=session,
        request=request,
        user_id=principal.user_id,
        key=service.check_key(idempotency_key),
        ttl=timedelta(hours=settings.idempotency_ttl_hours),
    )


Idempotent = Annotated[IdempotentRequest, Depends(_idempotent_request)]
