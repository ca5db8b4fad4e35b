"""TOTP second factor (pyotp) and encryption of TOTP secrets at rest.

A TOTP secret is as good as a password's second half, so the column holds it
encrypted under a key derived from ``BOURSE_TOTP_KEY``: a database dump alone does
not give an attacker the codes. The standard library has no block cipher and we
would rather not add a dependency for 20 bytes, so the construction is
HMAC-SHA256 in counter mode as the keystream (a PRF, which is all a stream cipher
needs) with a random 128-bit nonce per encryption, then encrypt-then-MAC with a
separate HMAC-SHA256 key. Tampering or a wrong key is detected, never decrypted
into a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import datetime

import pyotp

from bourse.settings import Settings

ISSUER_NAME = "Bourse"
# Codes from one step before or after the current 30-second step are accepted, for
# clock drift and typing time.
VALID_WINDOW = 1
CODE_DIGITS = 6
_VERSION = "v1"
_NONCE_BYTES = 16
_TAG_BYTES = 32


class TotpSecretUnreadable(Exception):
    """The stored secret does not authenticate under the configured key."""


def _keys(settings: Settings) -> tuple[bytes, bytes]:
    root = hmac.new(settings.totp_key.get_secret_value().encode(), b"bourse totp secret v1", hashlib.sha256).digest()
    return hmac.new(root, b"encrypt", hashlib.sha256).digest(), hmac.new(root, b"mac", hashlib.sha256).digest()


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = bytearray()
    counter = 0
    while len(blocks) < length:
        blocks += hmac.new(key, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        counter += 1
    return bytes(blocks[:length])


def encrypt_secret(settings: Settings, secret: str) -> str:
    enc_key, mac_key = _keys(settings)
    plain = secret.encode("ascii")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    cipher = bytes(a ^ b for a, b in zip(plain, _keystream(enc_key, nonce, len(plain)), strict=True))
    tag = hmac.new(mac_key, nonce + cipher, hashlib.sha256).digest()
    return f"{_VERSION}:" + base64.urlsafe_b64encode(nonce + cipher + tag).decode("ascii")


def decrypt_secret(settings: Settings, stored: str) -> str:
    version, _, encoded = stored.partition(":")
    if version != _VERSION:
        raise TotpSecretUnreadable("unknown TOTP secret format")
    try:
        raw = base64.urlsafe_b64decode(encoded.encode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise TotpSecretUnreadable("the stored TOTP secret is not valid base64") from exc
    if len(raw) <= _NONCE_BYTES + _TAG_BYTES:
        raise TotpSecretUnreadable("the stored TOTP secret is truncated")
    nonce, cipher, tag = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:-_TAG_BYTES], raw[-_TAG_BYTES:]
    enc_key, mac_key = _keys(settings)
    if not hmac.compare_digest(tag, hmac.new(mac_key, nonce + cipher, hashlib.sha256).digest()):
        raise TotpSecretUnreadable("the stored TOTP secret does not authenticate (wrong BOURSE_TOTP_KEY?)")
    plain = bytes(a ^ b for a, b in zip(cipher, _keystream(enc_key, nonce, len(cipher)), strict=True))
    return plain.decode("ascii")


def new_secret() -> str:
    """A random base32 secret (160 bits, as RFC 4226 recommends)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (usually from a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)


def matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code equals ``code`` (within the window), or None.

    The caller stores the step so that a code is accepted at most once.
    """
    code = code.strip()
    # ASCII digits only: str.isdigit() admits other scripts' digits, which
    # hmac.compare_digest refuses to compare.
    if len(code) != CODE_DIGITS or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        if hmac.compare_digest(totp.at(now, counter_offset=offset), code):
            return current + offset
    return None
