"""`bourse up` on the embedded defaults, for the README walkthrough tests: start it in an
empty directory, sign in over HTTP, create staff with the real `bourse users create`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.processes import clean_env, free_port, start, stop, wait_for_output

PASSWORD = "correct horse battery staple"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`bourse up` (API, worker, scheduler, PSP simulator) on free ports: its URL, environment and directory."""
    port = free_port()
    env = clean_env(BOURSE_PORT=str(port), BOURSE_PSP_SIM_URL=f"http://127.0.0.1:{free_port()}")
    process = start(["-m", "bourse", "up"], env, cwd=tmp_path)
    try:
        wait_for_output(process, "Bourse is running at", timeout=90)
        yield f"http://127.0.0.1:{port}", env, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        finally:
            stop(process)


def login(client: httpx.Client, base: str, email: str, password: str = PASSWORD) -> dict[str, str]:
    """The Authorization header for ``email``, signed in through the API."""
    response = client.post(f"{base}/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def create_user(env: dict[str, str], cwd: Path, email: str, role: str, password: str = PASSWORD) -> str:
    """A staff user made by the real `bourse users create` (password on stdin); their id."""
    done = subprocess.run(
        [sys.executable, "-m", "bourse", "users", "create", "--email", email, "--role", role],
        input=f"{password}\n",
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"with id ([0-9a-f-]{36})", done.stdout)
    assert found is not None, done.stdout
    return found.group(1)
