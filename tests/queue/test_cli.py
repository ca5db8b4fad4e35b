"""``bourse jobs failed``: what an operator reads at the terminal."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bourse.cli import main
from tests.queue.test_admin_api import make_failed
from tests.support.queue_env import QueueEnv


def jobs_failed(queue: QueueEnv, *args: str) -> str:
    result = CliRunner().invoke(main, ["jobs", "failed", *args], env=queue.env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_an_empty_list_says_so_rather_than_printing_nothing(sqlite_queue: QueueEnv) -> None:
    assert jobs_failed(sqlite_queue) == "no failed jobs\n"
    assert json.loads(jobs_failed(sqlite_queue, "--json")) == []


@pytest.mark.parametrize("count", [1, 2])
def test_failed_jobs_are_listed_under_a_header_newest_first(sqlite_queue: QueueEnv, count: int) -> None:
    ids = [make_failed(sqlite_queue, f"marker-{n}") for n in range(count)]
    header, *rows = jobs_failed(sqlite_queue).splitlines()
    assert header.split()[:5] == ["id", "uuid", "queue", "job", "failed"]
    assert [row.split()[1] for row in rows] == list(reversed(ids))
    assert all("RuntimeError: marker-" in row and "tests.record" in row for row in rows)
