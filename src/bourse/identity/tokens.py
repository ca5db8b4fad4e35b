"""Access tokens (JWT, PyJWT) and opaque refresh tokens.

Access tokens are HS256 JWTs. The algorithm is pinned on both sides: we sign with
HS256 and decode with ``algorithms=["HS256"]`` only, so ``alg: none``, HS512, or an
RS256 header carrying our secret as a "public key" are all refused. The ``kid``
header selects the verification key among the current key and the retired keys
still configured, which is how a key is rotated without logging everybody out.
Every token carries ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, ``sub``, ``role``
and ``jti``, and all of them are required on decode.

A verified token's claims are kept in a per-process cache (:class:`VerifiedTokens`),
keyed by the token and by the keys and claims that verified it, until the token
expires. A client sends the same access token with every request for its whole
life, and checking it again (base64, JSON, HMAC and seven claims in Python) costs
as much as the database read of the user behind it. Nothing about a token's
validity can change before it expires except the verifier's own keys, which are
part of the cache key; whether its user may still act is the principal's check
(:mod:`bourse.identity.principals`), made on every request.

Refresh tokens are random strings that mean nothing by themselves; the database
stores only their SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from bourse.identity.errors import InvalidToken
from bourse.identity.models import Role
from bourse.logging import get_logger
from bourse.settings import Settings

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["iss", "aud", "exp", "nbf", "iat", "sub", "role", "jti"]
# Clock skew tolerated between the issuer and this verifier.
LEEWAY_SECONDS = 5
REFRESH_TOKEN_BYTES = 32
# Verified tokens kept per process: about 1 KB each, so at most a few MB.
VERIFIED_TOKENS_MAX = 10_000

log = get_logger(__name__)


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: Role
    email: str
    token_id: str
    expires_at: datetime


def _subject_id(subject: object) -> uuid.UUID:
    value = getattr(subject, "user_id", None) or getattr(subject, "id", None)
    if not isinstance(value, uuid.UUID):
        raise TypeError("a token subject needs a UUID id (or user_id)")
    return value


def issue_access_token(settings: Settings, subject: object, *, now: datetime | None = None) -> str:
    """A signed access token for a ``User`` or a ``Principal``, valid for the configured life."""
    issued = now or datetime.now(UTC)
    role = Role(getattr(subject, "role"))  # noqa: B009 - User and Principal both have it
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(_subject_id(subject)),
        "role": role.value,
        "email": str(getattr(subject, "email")),  # noqa: B009 - User and Principal both have it
        "iat": issued,
        "nbf": issued,
        "exp": issued + timedelta(seconds=settings.access_token_ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims,
        settings.jwt_secret.get_secret_value(),
        algorithm=ALGORITHM,
        headers={"kid": settings.jwt_key_id, "typ": "JWT"},
    )


def _verification_key(settings: Settings, alg: object, kid: object) -> str:
    """The key the ``kid`` names, if the header claims our one algorithm."""
    if alg != ALGORITHM:
        raise InvalidToken
    if kid == settings.jwt_key_id:
        return settings.jwt_secret.get_secret_value()
    previous = settings.previous_jwt_keys
    if isinstance(kid, str) and kid in previous:
        return previous[kid]
    raise InvalidToken


# What a token's verification depends on besides the token: issuer, audience and keys.
VerifierId = tuple[object, ...]


def _verifier(settings: Settings) -> VerifierId:
    return (
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_key_id,
        settings.jwt_secret.get_secret_value(),
        tuple(sorted(settings.previous_jwt_keys.items())),
    )


class VerifiedTokens:
    """Token -> its verified claims, until the token expires.

    Only tokens that passed every check are stored, so invalid tokens cannot fill it;
    beyond ``max_entries`` the least recently used go. An entry is served while the
    wall clock (``clock``, seconds since the epoch) is before the token's expiry plus
    the leeway the full check allows, so an expired token is refused exactly as
    without the cache. Thread-safe: the event loop and worker threads share it.
    """

    def __init__(self, *, max_entries: int = VERIFIED_TOKENS_MAX, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, VerifierId], tuple[AccessClaims, float]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, token: str, verifier: VerifierId) -> AccessClaims | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get((token, verifier))
            if entry is None:
                return None
            claims, valid_until = entry
            if now >= valid_until:
                del self._entries[(token, verifier)]
                return None
            self._entries.move_to_end((token, verifier))
            return claims

    def put(self, token: str, verifier: VerifierId, claims: AccessClaims) -> None:
        valid_until = claims.expires_at.timestamp() + LEEWAY_SECONDS
        with self._lock:
            self._entries[(token, verifier)] = (claims, valid_until)
            self._entries.move_to_end((token, verifier))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_PROCESS_TOKENS = VerifiedTokens()


def verified_tokens() -> VerifiedTokens:
    """This process's cache of verified access tokens."""
    return _PROCESS_TOKENS


def decode_access_token(settings: Settings, token: str, *, cache: VerifiedTokens | None = None) -> AccessClaims:
    """Verify a token and return its claims, or raise :class:`InvalidToken`.

    A token this process verified before under the same keys is served from ``cache``
    (the process's, unless another is given) until it expires. The reason for a
    refusal is logged at debug level only: clients get one code.
    """
    tokens = _PROCESS_TOKENS if cache is None else cache
    verifier = _verifier(settings)
    known = tokens.get(token, verifier)
    if known is not None:
        return known
    claims = _verify(settings, token)
    tokens.put(token, verifier, claims)
    return claims


def _verify(settings: Settings, token: str) -> AccessClaims:
    try:
        header = jwt.get_unverified_header(token)
        key = _verification_key(settings, header.get("alg"), header.get("kid"))
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )
        return AccessClaims(
            user_id=uuid.UUID(str(payload["sub"])),
            role=Role(payload["role"]),
            email=str(payload.get("email", "")),
            token_id=str(payload["jti"]),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        )
    except InvalidToken:
        log.debug("access_token_refused", reason="bad header, algorithm or key id")
        raise
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.debug("access_token_refused", reason=type(exc).__name__)
        raise InvalidToken from None


def new_refresh_token() -> str:
    """A fresh opaque refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    """The stored form of a refresh token. SHA-256 suffices: the input is 256 random bits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
