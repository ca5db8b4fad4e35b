"""Types of the client factories that the identity and referral fixtures hand to tests."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

# identity's ``make_client(settings, ip=..., redis=...)``: a client for an app with extra settings.
ClientFactory = Callable[..., TestClient]
# referrals' ``make_client(**overrides)``: a client for an app with extra settings.
AppFactory = Callable[..., TestClient]
