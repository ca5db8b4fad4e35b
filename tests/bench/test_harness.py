"""The harness every benchmark shares: its figures, its worker processes, its child commands."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click
import psutil  # type: ignore[import-untyped]
import pytest

from bourse.bench.harness import (
    RUN_SAMPLES,
    WORKER_SAMPLES,
    Children,
    Tally,
    emit,
    latency_ms,
    percentile,
    run_processes,
)
from tests.support.bench import ERRORS_OF_SEED_1, record_worker
from tests.support.processes import ROOT
from tests.support.waiting import wait_until


def test_percentile_is_the_nearest_rank_and_zero_for_nothing() -> None:
    assert percentile([], 0.5) == 0.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 0.5) == 51.0  # round(49.5) is 50 (banker's): the 51st value
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert latency_ms([0.0123456], 0.5) == 12.35
    assert latency_ms([0.0123456], 0.5, 1) == 12.3


def test_a_tally_counts_every_error_and_keeps_the_first_few() -> None:
    tally = Tally()
    for index in range(WORKER_SAMPLES + 4):
        tally.error(f"error {index}")
    assert tally.errors == WORKER_SAMPLES + 4
    assert tally.samples == [f"error {index}" for index in range(WORKER_SAMPLES)]


@pytest.mark.process
def test_run_processes_gives_each_process_its_arguments_and_seed_and_combines_the_tallies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the spawned interpreters import tests.support.bench
    run = run_processes(record_worker, [("a",), ("b",), ("c",)], seconds=1)
    assert sorted(run.latencies) == [0.0, 1.0, 2.0]
    assert run.errors == ERRORS_OF_SEED_1
    assert run.error_samples == [f"b: error {index}" for index in range(WORKER_SAMPLES)][:RUN_SAMPLES]
    assert run.elapsed > 0


def test_emit_prints_json_a_summary_or_one_line_per_key(capsys: pytest.CaptureFixture[str]) -> None:
    result = {"benchmark": "x", "p50_ms": 1.5}
    emit(result, as_json=True)
    assert json.loads(capsys.readouterr().out) == result
    emit(result, as_json=False, summary="x: 1.5 ms")
    assert capsys.readouterr().out == "x: 1.5 ms\n"
    emit(result, as_json=False, width=10)
    assert capsys.readouterr().out == " benchmark: x\n    p50_ms: 1.5\n"


@pytest.mark.process
def test_children_log_their_output_and_account_cpu_by_role(tmp_path: Path) -> None:
    with Children(os.environ, tmp_path) as children:
        printer = children.start("printer-1", [sys.executable, "-c", "print('hello')"], role="printer")
        printer.wait(timeout=30)
        cpu = children.cpu_seconds()
    assert (tmp_path / "printer-1.log").read_text() == "hello\n"
    assert set(cpu) >= {"printer", "bench client"}


@pytest.mark.process
def test_stopping_children_ends_each_ones_whole_session(tmp_path: Path) -> None:
    # A child that starts a grandchild and ignores nothing: stop() must end both.
    script = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    children = Children(os.environ, tmp_path)
    child = children.start("parent", [sys.executable, "-c", script])
    log = tmp_path / "parent.log"
    grandchild_pid = _wait_for_pid(log)
    children.stop()
    assert child.returncode == -signal.SIGTERM
    wait_until(lambda: not _alive(grandchild_pid), "the grandchild to end")


@pytest.mark.process
def test_a_worker_that_dies_before_it_is_ready_fails_the_run_at_once() -> None:
    # Nothing on the spawned interpreters' path has tests.support.bench: they die importing it.
    with pytest.raises(click.ClickException, match="exited before it was ready"):
        run_processes(record_worker, [("a",)], seconds=1)


def _wait_for_pid(log: Path) -> int:
    """The pid the child wrote to its log, once it has."""
    wait_until(lambda: log.read_text().strip().isdigit(), f"a pid in {log}")
    return int(log.read_text().strip())


def _alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
