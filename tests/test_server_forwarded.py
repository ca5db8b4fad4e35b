"""Whose address a request comes from: X-Forwarded-For is believed from trusted proxies only.

Behind nginx (compose.yaml) or an ingress, every connection comes from the proxy,
which names the real client in X-Forwarded-For. Bourse counts failed sign-ins per
client address, so a header believed from anyone else would let any client choose
the address its failures are counted against. ``BOURSE_FORWARDED_ALLOW_IPS``
lists the proxies (loopback by default, the sidecar layout).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx2 as httpx
import pytest

from bourse.migrations import upgrade
from bourse.settings import SettingsError, load_settings
from tests.support.processes import clean_env, free_port, start, stop, wait_for_status
from tests.support.services import make_settings

pytestmark = pytest.mark.process

CLIENT = "203.0.113.7"


def test_loopback_proxies_are_trusted_by_default() -> None:
    assert load_settings().forwarded_allow_ips == ("127.0.0.1", "::1")


def test_addresses_and_networks_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_FORWARDED_ALLOW_IPS", " 172.31.253.2, 10.0.0.0/8,fd00::/8 ")
    assert load_settings().forwarded_allow_ips == ("172.31.253.2", "10.0.0.0/8", "fd00::/8")


def test_empty_trusts_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_FORWARDED_ALLOW_IPS", "")
    assert load_settings().forwarded_allow_ips == ()


@pytest.mark.parametrize("value", ["*", "nginx", "300.1.2.3", "10.0.0.0/33", "10.0.0.1/8", "127.0.0.1,,::1"])
def test_anything_but_addresses_and_networks_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BOURSE_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert len(excinfo.value.problems) == 1
    assert excinfo.value.problems[0].startswith("BOURSE_FORWARDED_ALLOW_IPS: ")


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/bourse.db"
    upgrade(make_settings(url))
    return clean_env(BOURSE_DATABASE_URL=url, BOURSE_SHUTDOWN_DRAIN_SECONDS="0")


def client_ip_seen(env: dict[str, str], **headers: str) -> str:
    """Fail one sign-in through a real server; the client address its log line names."""
    port = free_port()
    process = start(["-m", "bourse", "serve", "--port", str(port)], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"email": "nobody@example.com", "password": "not the right password"},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        output = stop(process)
    failures = [json.loads(line) for line in output.splitlines() if '"login_failed"' in line]
    assert len(failures) == 1, output
    address: str = failures[0]["client_ip"]
    return address


@pytest.mark.parametrize(
    ("allow", "seen"),
    [
        pytest.param(None, CLIENT, id="default-loopback-trusted"),
        pytest.param("127.0.0.1", CLIENT, id="this-proxy-trusted"),
        pytest.param("192.0.2.10", "127.0.0.1", id="another-proxy-only"),
        pytest.param("10.0.0.0/8,192.0.2.0/24", "127.0.0.1", id="other-networks-only"),
        pytest.param("", "127.0.0.1", id="no-proxy"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    server_env: dict[str, str], allow: str | None, seen: str
) -> None:
    env = dict(server_env) if allow is None else {**server_env, "BOURSE_FORWARDED_ALLOW_IPS": allow}
    assert client_ip_seen(env, **{"X-Forwarded-For": CLIENT}) == seen


def test_uvicorns_own_variable_does_not_widen_the_trust(server_env: dict[str, str]) -> None:
    """FORWARDED_ALLOW_IPS is uvicorn's default; Bourse always passes its own setting."""
    env = {**server_env, "FORWARDED_ALLOW_IPS": "*", "BOURSE_FORWARDED_ALLOW_IPS": "192.0.2.10"}
    assert client_ip_seen(env, **{"X-Forwarded-For": CLIENT}) == "127.0.0.1"
