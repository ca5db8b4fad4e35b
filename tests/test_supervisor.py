"""The supervisor behind `bourse up`: restart with backoff, bounded stop."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

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
