"""Webhook signatures: HMAC-SHA256 over ``timestamp.body`` in a ``t=...,v1=...`` header.

The scheme Bourse's simulator signs with and its connector verifies (the same shape
as Stripe's): the sender signs ``f"{t}.{body}"`` with the shared secret at the
moment it sends, so a replayed delivery carries its original, ageing timestamp.
Several ``v1`` values may appear while a secret is being rotated; any one match
is enough. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "PSP-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """The header is missing, malformed, does not match, or is too old."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def compute(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body``, signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute(secret, t, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header")
        if key == "t":
            # ASCII digits only: "²".isdigit() is true too, and int() refuses it.
            if not (value.isascii() and value.isdigit()) or len(value) > 12:  # noqa: PLR2004 - a Unix time in seconds
                raise SignatureError("malformed signature timestamp")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("signature header needs t= and v1=")
    return timestamp, signatures


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``; return the signed timestamp.

    Raises :class:`SignatureError` when the header is absent or malformed, when no
    signature matches, or when the timestamp is more than ``tolerance`` seconds
    away from ``now`` (in either direction: a clock far ahead is as suspect).
    """
    if not header:
        raise SignatureError("missing signature header")
    timestamp, signatures = _parse(header)
    expected = compute(secret, timestamp, body)
    # Compare against every candidate, without stopping early, in constant time.
    matched = False
    for candidate in signatures:
        # As bytes: compare_digest refuses str with non-ASCII characters, which a
        # header may carry (servers decode header bytes as Latin-1).
        matched |= hmac.compare_digest(expected.encode("ascii"), candidate.encode("utf-8", "replace"))
    if not matched:
        raise SignatureError("signature does not match")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("signature timestamp is outside the tolerance", expired=True)
    return timestamp
