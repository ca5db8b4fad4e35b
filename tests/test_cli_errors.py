"""The real ``bourse`` command when its database cannot be used, and what human commands print.

Every command that opens the database exits 3 with one line naming the database
(password masked) when the database cannot be reached, does not exist or is not
migrated; never a driver's traceback. Commands meant for people print only their
result on stdout, and no informational log lines (warnings and errors still go to
stderr).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.processes import clean_env
from tests.support.services import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.process

EXIT_DATABASE = 3
PASSWORD = "cli-errors password 1234"
DB_PASSWORD = "db-pw-Lq4Zr8Xn2"
# A port in this suite's range on which nothing listens.
CLOSED_PORT = 18301

# Every command that opens the database, with what it needs to get that far.
DATABASE_COMMANDS: list[tuple[list[str], str | None]] = [
    (["instruments", "list"], None),
    (["instruments", "list", "--json"], None),
    (["instruments", "halt", "BTC-USD", "--reason", "test"], None),
    (["assets", "list"], None),
    (["assets", "deactivate", "USD"], None),
    (["ledger", "verify"], None),
    (["users", "create", "--email", "ada@example.com"], f"{PASSWORD}\n"),
    (["users", "lock", "--email", "ada@example.com"], None),
    (["jobs", "stats"], None),
    (["jobs", "failed"], None),
    (["jobs", "flush"], None),
    (["jobs", "retry", "all"], None),
    (["schedule", "run"], None),
    (["commissions", "payout"], None),
    (["psp", "reconcile", "--connector", "simulator"], None),
    (["worker", "--once"], None),
    (["scheduler"], None),
]


def bourse(
    *args: str, env: dict[str, str], cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bourse", *args],
        env=env,
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_database_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == EXIT_DATABASE, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("bourse: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- SQLite: no ./var/ -------------------------------------------------------------------


@pytest.mark.parametrize(("args", "stdin"), DATABASE_COMMANDS, ids=[" ".join(a) for a, _ in DATABASE_COMMANDS])
def test_without_a_database_file_every_command_says_so_in_one_line(
    tmp_path: Path, args: list[str], stdin: str | None
) -> None:
    result = bourse(*args, env=clean_env(), cwd=tmp_path, stdin=stdin)
    assert_one_database_line(result, "sqlite:///./var/bourse.db", "does not exist", "bourse migrate")
    # Nothing was created on the way: no directory, no empty database file.
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_that_is_not_migrated(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    env = clean_env(BOURSE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    result = bourse("instruments", "list", env=env)
    assert_one_database_line(result, f"sqlite:///{tmp_path / 'empty.db'}", "not migrated", "bourse migrate")


# --- PostgreSQL: unreachable, missing, not migrated ---------------------------------------------


def test_an_unreachable_postgres_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql://bourse:{DB_PASSWORD}@127.0.0.1:{CLOSED_PORT}/bourse"
    for args in (
        ["instruments", "list"],
        ["users", "lock", "--email", "ada@example.com"],
        ["migrate"],
        ["bench", "pgbench", "--seconds", "1"],
    ):
        result = bourse(*args, env=clean_env(BOURSE_DATABASE_URL=url), cwd=tmp_path)
        line = assert_one_database_line(result, f"postgresql://bourse:***@127.0.0.1:{CLOSED_PORT}/bourse")
        assert re.search(r"cannot reach the database .*: .*refused", line), line
        assert DB_PASSWORD not in result.stderr


def test_a_password_given_separately_is_not_shown_either(tmp_path: Path) -> None:
    env = clean_env(
        BOURSE_DATABASE_URL=f"postgresql://bourse@127.0.0.1:{CLOSED_PORT}/bourse", BOURSE_DATABASE_PASSWORD=DB_PASSWORD
    )
    result = bourse("ledger", "verify", env=env, cwd=tmp_path)
    assert_one_database_line(result, f"postgresql://bourse@127.0.0.1:{CLOSED_PORT}/bourse")
    assert DB_PASSWORD not in result.stderr


def test_a_postgres_database_that_does_not_exist(tmp_path: Path, postgres_url: str) -> None:
    del postgres_url  # the server is reachable (the test skips or fails otherwise)
    name = f"bourse_cli_missing_{uuid.uuid4().hex[:8]}"
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    for args in (["assets", "list"], ["migrate"]):
        result = bourse(*args, env=clean_env(BOURSE_DATABASE_URL=url), cwd=tmp_path)
        assert_one_database_line(result, name, "does not exist")


def test_a_postgres_database_that_is_not_migrated(tmp_path: Path, empty_postgres_url: str) -> None:
    result = bourse("jobs", "stats", env=clean_env(BOURSE_DATABASE_URL=empty_postgres_url), cwd=tmp_path)
    assert_one_database_line(result, make_url(empty_postgres_url).database or "", "not migrated", "bourse migrate")


def test_the_readme_documents_the_database_exit_code() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "exits with code **3**" in readme


# --- Human output ------------------------------------------------------------------------------


def test_users_create_prints_only_its_result(sqlite_url: str) -> None:
    email = f"human-{uuid.uuid4().hex[:8]}@example.com"
    env = clean_env(BOURSE_DATABASE_URL=sqlite_url)
    result = bourse("users", "create", "--email", email, "--role", "operator", env=env, stdin=f"{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"created operator {re.escape(email)} with id [0-9a-f-]{{36}}\n", result.stdout)
    assert result.stderr == ""  # no JSON log line among the human output
    for action in ("lock", "unlock"):
        changed = bourse("users", action, "--email", email, env=env)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == f"{email} is now {'locked' if action == 'lock' else 'active'}\n"
        assert changed.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["assets", "list"],
        ["instruments", "list"],
        ["ledger", "verify"],
        ["jobs", "stats"],
        ["schedule", "list"],
        ["psp", "connectors"],
    ],
    ids=" ".join,
)
def test_human_commands_print_no_log_lines(sqlite_url: str, args: list[str]) -> None:
    result = bourse(*args, env=clean_env(BOURSE_DATABASE_URL=sqlite_url))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert '"event"' not in result.stdout
    assert result.stderr == ""


def test_debug_brings_the_log_lines_back_on_stderr(sqlite_url: str) -> None:
    env = clean_env(BOURSE_DATABASE_URL=sqlite_url, BOURSE_LOG_LEVEL="debug")
    email = f"debug-{uuid.uuid4().hex[:8]}@example.com"
    result = bourse("users", "create", "--email", email, env=env, stdin=f"{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"created client {email} with id ")
    assert '"event": "user_created"' in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
