"""``bourse openapi``: the schema the web UI generates its types from, without a database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bourse.cli import main
from tests.support.processes import clean_env, run_bourse


def _run(target: Path) -> str:
    # In-process, through --output: the fixtures' own log lines share this process's stdout.
    result = CliRunner().invoke(main, ["openapi", "--output", str(target)])
    assert result.exit_code == 0, result.output
    return target.read_text(encoding="utf-8")


def test_it_writes_the_served_schema_sorted_and_indented(client: TestClient, tmp_path: Path) -> None:
    printed = _run(tmp_path / "openapi.json")
    served = client.get("/api/openapi.json").json()
    assert json.loads(printed) == served
    assert printed == json.dumps(served, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert printed.endswith("}\n")
    assert not printed.endswith("\n\n")


def test_it_reaches_no_database_and_ignores_what_is_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    expected = _run(tmp_path.parent / f"{tmp_path.name}-expected.json")
    # A database nobody can reach, Redis likewise, and a metrics port that would drop /metrics.
    monkeypatch.setenv("BOURSE_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setenv("BOURSE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("BOURSE_METRICS_PORT", "9")
    monkeypatch.setenv("BOURSE_MATCHER", "in-process")
    monkeypatch.chdir(tmp_path)
    assert _run(tmp_path.parent / f"{tmp_path.name}-configured.json") == expected
    assert list(tmp_path.iterdir()) == []  # no ./var/bourse.db either


@pytest.mark.process
def test_without_output_it_prints_the_same_document_and_nothing_else(tmp_path: Path) -> None:
    result = run_bourse("openapi", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == _run(tmp_path / "openapi.json")


def test_an_invalid_configuration_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_NO_SUCH_SETTING", "1")
    result = CliRunner().invoke(main, ["openapi"])
    assert result.exit_code == 2
    assert "BOURSE_NO_SUCH_SETTING" in result.output
