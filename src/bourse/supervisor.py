"""A small process supervisor for ``bourse up``, the embedded single-machine run.

Each child is a ``bourse`` subcommand in its own process group, so a Ctrl-C in
the terminal reaches only the supervisor, which then stops the children in order:
SIGTERM to each, a bounded wait, then SIGKILL for any that did not exit. A child
that exits on its own is logged and restarted after an exponential backoff, which
resets once the child has stayed up for a while.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from bourse.logging import get_logger

log = get_logger("bourse.supervisor")


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        stop_timeout: float = 8.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.stop_timeout = stop_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        self._stop = threading.Event()

    def request_stop(self, sig: int | None = None, _frame: FrameType | None = None) -> None:
        if sig is not None:
            log.info("supervisor_stopping", signal=signal.Signals(sig).name)
        self._stop.set()

    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        child.process = subprocess.Popen(list(child.spec.argv), env=env, start_new_session=True)  # noqa: S603 - argv is built by us, never from user input
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("child_started", child=child.spec.name, pid=child.process.pid, restarts=child.restarts)

    def _reap(self, child: _Child, now: float) -> None:
        process = child.process
        if process is None or process.poll() is None:
            return
        uptime = now - child.started_at
        if uptime >= self.stable_after:
            child.backoff = 0.0
        child.backoff = self.backoff_initial if child.backoff == 0 else min(child.backoff * 2, self.backoff_max)
        child.restart_at = now + child.backoff
        child.process = None
        child.restarts += 1
        log.error(
            "child_exited",
            child=child.spec.name,
            exit_code=process.returncode,
            uptime_seconds=round(uptime, 3),
            restart_in_seconds=child.backoff,
        )

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        """Run until a stop is requested (SIGINT/SIGTERM); return the exit code."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                self._start(child)
            while not self._stop.wait(self.poll_interval):
                now = time.monotonic()
                for child in self.children:
                    self._reap(child, now)
                    if child.process is None and child.restart_at is not None and now >= child.restart_at:
                        self._start(child)
                if on_tick is not None:
                    on_tick()
            self._stop_children()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _stop_children(self) -> None:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child_killed", pid=process.pid, reason="did not stop in time")
                process.kill()
                process.wait()
        log.info("supervisor_stopped")
