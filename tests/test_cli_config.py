"""The real ``bourse`` command, run as a subprocess: configuration errors, secrets, config show."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import clean_env, free_port, run_bourse
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

JWT = "cli-jwt-Kd83nfQ0xLz7Vb2Mw5Rt9Yp1Hs4Ga6Ue"  # 38 characters
PSP_KEY = "cli-psp-key-Ah7Jq2Wn5Ep8"
PSP_SECRET = "cli-psp-secret-Zc4Xv1Bn6Mm3"
TOTP_KEY = "cli-totp-key-Rf6Tg1Yh8Uj3Ik5Ol9Pa2Sd"  # 36 characters
SECRETS = (JWT, PSP_KEY, PSP_SECRET, TOTP_KEY)
FAKE_PG_URL = "postgresql://bourse@127.0.0.1:1/never-connected"


def vault_file(directory: Path, name: str = "bourse.env") -> Path:
    """A Vault-agent style KEY=VALUE file; the secrets are on lines 3, 4, 6 and 7."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        "# Rendered by vault agent\n"
        "OTHER_SERVICE_TOKEN=not-ours\n"
        f"BOURSE_JWT_SECRET={JWT}\n"
        f"export BOURSE_PSP_API_KEY='{PSP_KEY}'\n"
        "\n"
        f'BOURSE_PSP_SECRET="{PSP_SECRET}"\n'
        f"BOURSE_TOTP_KEY={TOTP_KEY}\n",
        encoding="utf-8",
    )
    return path


def assert_no_secrets(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """Parse ``config show``: name, value (may be empty), source; columns are 2+ spaces apart."""
    rows: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = re.split(r" {2,}", line.strip())
        if len(parts) == 2:
            parts.insert(1, "")
        assert len(parts) == 3, line
        rows[parts[0]] = (parts[1], parts[2])
    return rows


# --- Production start-up refusal -----------------------------------------------------------


def test_production_without_jwt_secret_refuses_to_serve(tmp_path: Path) -> None:
    env = clean_env(
        BOURSE_ENV="production",
        BOURSE_DATABASE_URL=FAKE_PG_URL,
        BOURSE_PSP_API_KEY=PSP_KEY,
        BOURSE_PSP_SECRET=PSP_SECRET,
    )
    result = run_bourse("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "BOURSE_JWT_SECRET" in result.stderr
    # Only the missing secret is reported; the ones given are neither named nor shown.
    assert "BOURSE_PSP" not in result.stderr
    assert_no_secrets(result.stdout, result.stderr)


def test_production_with_nothing_configured_names_every_problem(tmp_path: Path) -> None:
    result = run_bourse("serve", env=clean_env(BOURSE_ENV="production"), cwd=tmp_path)
    assert result.returncode == 2
    for name in ("BOURSE_JWT_SECRET", "BOURSE_PSP_API_KEY", "BOURSE_PSP_SECRET", "BOURSE_DATABASE_URL"):
        assert name in result.stderr
    assert "dev-only" not in result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("jwt", "reason"),
    [
        ("", "is missing or empty"),
        ("changeme", "is a known default value"),
        ("dev-only-insecure-jwt-secret-change-me", "is a known default value"),
        ("too-short-Qw8Er5Ty", "must be at least 32 characters"),
    ],
)
def test_production_refuses_a_weak_jwt_secret(tmp_path: Path, jwt: str, reason: str) -> None:
    env = clean_env(
        BOURSE_ENV="production",
        BOURSE_DATABASE_URL=FAKE_PG_URL,
        BOURSE_JWT_SECRET=jwt,
        BOURSE_PSP_API_KEY=PSP_KEY,
        BOURSE_PSP_SECRET=PSP_SECRET,
    )
    result = run_bourse("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"BOURSE_JWT_SECRET: {reason}" in result.stderr
    if len(jwt) > len("changeme"):
        assert jwt not in result.stderr + result.stdout


def test_production_refuses_sqlite(tmp_path: Path) -> None:
    env = clean_env(
        BOURSE_ENV="production", BOURSE_JWT_SECRET=JWT, BOURSE_PSP_API_KEY=PSP_KEY, BOURSE_PSP_SECRET=PSP_SECRET
    )
    result = run_bourse("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "BOURSE_DATABASE_URL: production requires PostgreSQL" in result.stderr


# --- Production start-up from a Vault-agent file ----------------------------------------------


def _ready_status(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def test_production_serves_with_secrets_from_a_vault_file(tmp_path: Path, postgres_url: str) -> None:
    secrets_dir = tmp_path / "vault" / "secrets"
    vault_file(secrets_dir)
    port = free_port()
    env = clean_env(
        BOURSE_ENV="production",
        BOURSE_SECRETS_DIRS=str(secrets_dir),
        BOURSE_DATABASE_URL=postgres_url,
        BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
    )
    stdout_path, stderr_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            status: list[int | None] = [None]

            def ready() -> bool:
                if process.poll() is not None:
                    logs = stderr_path.read_text(errors="replace")
                    raise AssertionError(f"bourse serve exited ({process.returncode}) before it was ready:\n{logs}")
                status[0] = _ready_status(port)
                return status[0] == 200

            wait_until(
                ready,
                lambda: f"/readyz to answer 200 (last: {status[0]}):\n{stderr_path.read_text(errors='replace')}",
                interval=0.1,
            )
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = stdout_path.read_text(errors="replace") + stderr_path.read_text(errors="replace")
    assert exit_code == 0, logs
    assert_no_secrets(logs)


# --- config show ------------------------------------------------------------------------------


def test_config_show_masks_secrets_and_names_their_file(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    path = vault_file(secrets_dir)
    env = clean_env(BOURSE_SECRETS_DIRS=str(secrets_dir), BOURSE_PORT="9123")
    result = run_bourse("config", "show", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout, result.stderr)
    rows = table(result.stdout)
    assert rows["BOURSE_JWT_SECRET"] == ("********", f"file {path}:3")
    assert rows["BOURSE_PSP_API_KEY"] == ("********", f"file {path}:4")
    assert rows["BOURSE_PSP_SECRET"] == ("********", f"file {path}:6")
    assert rows["BOURSE_PORT"] == ("9123", "env")
    assert rows["BOURSE_SECRETS_DIRS"] == (str(secrets_dir), "env")
    assert rows["BOURSE_HOST"] == ("127.0.0.1", "default")
    assert rows["BOURSE_ENV"] == ("development", "default")


def test_config_show_json(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    path = vault_file(secrets_dir)
    (secrets_dir / "BOURSE_REDIS_PASSWORD").write_text("redis-pw-Lk2Jh7\n", encoding="utf-8")
    env = clean_env(
        BOURSE_SECRETS_DIRS=str(secrets_dir),
        BOURSE_LOG_LEVEL="debug",
        BOURSE_DATABASE_URL="postgresql://bourse:db-pw-Po9Iu8@db.internal/bourse",
    )
    result = run_bourse("config", "show", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout, result.stderr)
    assert "redis-pw-Lk2Jh7" not in result.stdout
    assert "db-pw-Po9Iu8" not in result.stdout
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["BOURSE_JWT_SECRET"] == {
        "name": "BOURSE_JWT_SECRET",
        "value": "********",
        "source": f"file {path}:3",
        "secret": True,
    }
    assert rows["BOURSE_PSP_SECRET"]["source"] == f"file {path}:6"
    assert rows["BOURSE_REDIS_PASSWORD"]["source"] == f"file {secrets_dir / 'BOURSE_REDIS_PASSWORD'}"
    assert rows["BOURSE_REDIS_PASSWORD"]["value"] == "********"
    assert rows["BOURSE_LOG_LEVEL"] == {"name": "BOURSE_LOG_LEVEL", "value": "debug", "source": "env", "secret": False}
    assert rows["BOURSE_DATABASE_URL"]["value"] == "postgresql://bourse:***@db.internal/bourse"
    assert rows["BOURSE_PORT"] == {"name": "BOURSE_PORT", "value": "8000", "source": "default", "secret": False}
    assert {name for name, row in rows.items() if row["secret"]} == {
        "BOURSE_JWT_SECRET",
        "BOURSE_PSP_API_KEY",
        "BOURSE_PSP_SECRET",
        "BOURSE_DATABASE_PASSWORD",
        "BOURSE_REDIS_PASSWORD",
        "BOURSE_JWT_PREVIOUS_KEYS",
        "BOURSE_TOTP_KEY",
        "BOURSE_STRIPE_API_KEY",
        "BOURSE_STRIPE_WEBHOOK_SECRET",
    }


def test_config_show_env_wins_over_the_file(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    vault_file(secrets_dir)
    env = clean_env(BOURSE_SECRETS_DIRS=str(secrets_dir), BOURSE_JWT_SECRET="from-env-Nb5Vc3")
    result = run_bourse("config", "show", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from-env-Nb5Vc3" not in result.stdout
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["BOURSE_JWT_SECRET"]["source"] == "env"


def test_config_show_in_production_with_a_vault_file(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    path = vault_file(secrets_dir)
    env = clean_env(BOURSE_ENV="production", BOURSE_SECRETS_DIRS=str(secrets_dir), BOURSE_DATABASE_URL=FAKE_PG_URL)
    result = run_bourse("config", "show", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout, result.stderr)
    assert table(result.stdout)["BOURSE_JWT_SECRET"] == ("********", f"file {path}:3")


def test_malformed_secrets_file_names_file_and_line(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    path = secrets_dir / "bourse.env"
    path.write_text(f"# comment\nBOURSE_PSP_API_KEY={PSP_KEY}\nBOURSE_JWT_SECRET {JWT}\n", encoding="utf-8")
    result = run_bourse("config", "show", env=clean_env(BOURSE_SECRETS_DIRS=str(secrets_dir)), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}:3" in result.stderr
    assert "malformed line" in result.stderr
    assert result.stdout == ""
    assert_no_secrets(result.stdout, result.stderr)


def test_secrets_dir_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    result = run_bourse("config", "show", env=clean_env(BOURSE_SECRETS_DIRS=str(missing)), cwd=tmp_path)
    assert result.returncode == 2
    assert f"BOURSE_SECRETS_DIRS: {missing} is not a directory" in result.stderr


# --- Invalid values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BOURSE_PORT", "abc"),
        ("BOURSE_PORT", "70000"),
        ("BOURSE_SHUTDOWN_TIMEOUT_SECONDS", "-1"),
        ("BOURSE_DATABASE_CONNECT_TIMEOUT_SECONDS", "-2.5"),
        ("BOURSE_DATABASE_URL", "notaurl"),
        ("BOURSE_DATABASE_URL", "mysql://bourse:cli-db-pw-Ty6Re4@db/bourse"),
        ("BOURSE_DATABASE_URL", "postgresql://bourse@db:cli-db-pw-Ty6Re4/bourse"),
        ("BOURSE_REDIS_URL", "http://:cli-redis-pw-Gf5Dd2@cache:6379"),
        ("BOURSE_ENV", "staging"),
    ],
)
def test_invalid_value_exits_2_naming_the_setting(tmp_path: Path, key: str, value: str) -> None:
    result = run_bourse("config", "show", env=clean_env(**{key: value}), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{key}:" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    if len(value) > 5:
        assert value not in result.stderr
    assert "cli-db-pw-Ty6Re4" not in result.stderr
    assert "cli-redis-pw-Gf5Dd2" not in result.stderr


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["healthcheck"], ["up"]])
def test_every_command_refuses_invalid_configuration(tmp_path: Path, command: list[str]) -> None:
    env = clean_env(BOURSE_PORT="abc", BOURSE_SHUTDOWN_TIMEOUT_SECONDS="-1", BOURSE_DATABASE_URL="notaurl")
    result = run_bourse(*command, env=env, cwd=tmp_path)
    assert result.returncode == 2
    for name in ("BOURSE_PORT", "BOURSE_SHUTDOWN_TIMEOUT_SECONDS", "BOURSE_DATABASE_URL"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()
