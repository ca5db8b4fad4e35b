"""The supervisor behind `bourse up`: restart with backoff, bounded stop."""

from __future__ import annotations

import signal
import sys
import threading
import time

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


def test_stop_escalates_to_kill_for_a_child_that_ignores_sigterm() -> None:
    stubborn = ChildSpec(
        "stubborn",
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
    )
    supervisor = Supervisor([stubborn], stop_timeout=0.5, poll_interval=0.02)
    timer = threading.Timer(0.5, supervisor.request_stop)
    timer.start()
    started = time.monotonic()
    assert supervisor.run() == 0
    process = supervisor.children[0].process
    assert process is not None
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_signal_handlers_are_restored_after_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    supervisor = Supervisor([ChildSpec("sleep", [sys.executable, "-c", "import time; time.sleep(30)"])])
    threading.Timer(0.3, supervisor.request_stop).start()
    supervisor.run()
    assert signal.getsignal(signal.SIGTERM) == before
