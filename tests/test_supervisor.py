"""The supervisor behind `bourse up`: restart with backoff, bounded stop."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path

import pytest

from bourse.logging import configure_logging
from bourse.supervisor import ChildSpec, Supervisor

pytestmark = pytest.mark.process


def test_crashing_child_is_restarted_with_growing_backoff() -> None:
    crash = ChildSpec("crash", [sys.executable, "-c", "import sys; sys.exit(3)"])
    supervisor = Supervisor([crash], backoff_initial=0.2, backoff_max=0.8, poll_interval=0.02)
    backoffs: list[float] = []
    original_reap = supervisor._reap

    def recording_reap(child, now):  # type: ignore[no-untyped-def]
        had_process = child.process is not None and child.process.poll() is not None
        original_reap(child, now)
        if had_process:
            backoffs.append(child.backoff)
        if len(backoffs) >= 4:
            supervisor.request_stop()

    supervisor._reap = recording_reap  # type: ignore[method-assign]
    # Signals can only be installed from the main thread, so run it here.
    assert supervisor.run() == 0
    assert backoffs[:4] == [0.2, 0.4, 0.8, 0.8]
    assert supervisor.children[0].restarts >= 4


# A supervisor that never stopped its child would hang here: fail instead.
@pytest.mark.timeout(120)
def test_stop_escalates_to_kill_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ignoring = tmp_path / "ignoring"
    # The child says once it ignores SIGTERM. Left alone it exits 0 after its sleep,
    # so only a SIGKILL from the supervisor gives it the return code checked below.
    code = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    stubborn = ChildSpec("stubborn", [sys.executable, "-c", code, str(ignoring)])
    supervisor = Supervisor([stubborn], stop_timeout=0.5, poll_interval=0.02)

    def stop_once_ignoring() -> None:
        if ignoring.exists():
            supervisor.request_stop()

    # Signals can only be installed from the main thread, so run it here.
    assert supervisor.run(on_tick=stop_once_ignoring) == 0
    child = supervisor.children[0]
    assert child.process is not None
    assert child.process.returncode == -signal.SIGKILL
    assert child.restarts == 0  # the SIGKILL was the stop's, not a crash and a restart


def test_signal_handlers_are_restored_after_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    supervisor = Supervisor([ChildSpec("sleep", [sys.executable, "-c", "import time; time.sleep(30)"])])
    supervisor.run(on_tick=supervisor.request_stop)
    assert signal.getsignal(signal.SIGTERM) == before


# Each child touches its file once it is in place (its SIGTERM handling set up).
_STOPS_AS_ASKED = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0));"
    " pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
)
_IGNORES_SIGTERM = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
)
# Writes the signals it was started with blocked, then waits (they stay blocked).
_WRITES_ITS_BLOCKED_SIGNALS = (
    "import pathlib, signal, sys, time; blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []);"
    " pathlib.Path(sys.argv[1]).write_text(' '.join(sorted(s.name for s in blocked))); time.sleep(60)"
)


def _run_until_all_exist(supervisor: Supervisor, paths: list[Path]) -> None:
    def stop_once_all_exist() -> None:
        if all(path.exists() for path in paths):
            supervisor.request_stop()

    # Signals can only be installed from the main thread, so run it here.
    assert supervisor.run(on_tick=stop_once_all_exist) == 0


@pytest.mark.timeout(120)
def test_stop_logs_the_exit_code_of_each_child(tmp_path: Path) -> None:
    polite, stubborn = tmp_path / "polite", tmp_path / "stubborn"
    supervisor = Supervisor(
        [
            ChildSpec("polite", [sys.executable, "-c", _STOPS_AS_ASKED, str(polite)]),
            ChildSpec("stubborn", [sys.executable, "-c", _IGNORES_SIGTERM, str(stubborn)]),
        ],
        stop_timeout=0.5,
        poll_interval=0.02,
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        _run_until_all_exist(supervisor, [polite, stubborn])
    finally:
        configure_logging("info", "json")
    pids = {child.spec.name: child.process.pid for child in supervisor.children if child.process is not None}
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    stopped = {e["child"]: (e["pid"], e["exit_code"]) for e in entries if e["event"] == "child_stopped"}
    assert stopped == {"polite": (pids["polite"], 0), "stubborn": (pids["stubborn"], -signal.SIGKILL)}


@pytest.mark.timeout(120)
def test_a_child_can_be_started_with_the_stop_signals_blocked(tmp_path: Path) -> None:
    blocked, unblocked = tmp_path / "blocked", tmp_path / "unblocked"
    supervisor = Supervisor(
        [
            ChildSpec(
                "blocked", [sys.executable, "-c", _WRITES_ITS_BLOCKED_SIGNALS, str(blocked)], block_stop_signals=True
            ),
            ChildSpec("unblocked", [sys.executable, "-c", _WRITES_ITS_BLOCKED_SIGNALS, str(unblocked)]),
        ],
        stop_timeout=0.5,
        poll_interval=0.02,
    )
    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    _run_until_all_exist(supervisor, [blocked, unblocked])
    assert blocked.read_text() == "SIGINT SIGTERM"
    assert unblocked.read_text() == ""
    # The supervisor blocked them only while it started that child.
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask_before
    # Blocked to the end, the stop's SIGTERM never reached it: killed once stop_timeout ran out.
    codes = {child.spec.name: child.process.returncode for child in supervisor.children if child.process is not None}
    assert codes == {"blocked": -signal.SIGKILL, "unblocked": -signal.SIGTERM}
