"""A small process supervisor for ``bourse up`` (the embedded single-machine run) and
for the server processes of ``bourse serve --workers N``.

Each child is a ``bourse`` subcommand in its own process group, so a Ctrl-C in
the terminal reaches only the supervisor, which then stops the children in order:
SIGTERM to each, a bounded wait, then SIGKILL for any that did not exit; each
child's exit code is logged (``child_stopped``). A child that exits on its own is
logged and restarted after an exponential backoff, which resets once the child has
stayed up for a while.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bourse.logging import get_logger

log = get_logger("bourse.supervisor")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    # File descriptors the child inherits (the listening socket of `serve --workers`).
    pass_fds: tuple[int, ...] = ()
    # A file the child touches while it makes progress; see Supervisor(heartbeat_max_age=).
    heartbeat: Path | None = None
    # Start the child with SIGTERM and SIGINT blocked, for a child that unblocks them
    # once it has its handlers (a server process of `serve --workers`): a stop that
    # comes while it starts then waits for it, instead of killing it by the signals'
    # default action before it can handle them.
    block_stop_signals: bool = False


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
        heartbeat_max_age: float | None = None,
        heartbeat_startup: float | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.stop_timeout = stop_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        self.heartbeat_max_age = heartbeat_max_age
        # How long a child may take to its first beat (imports, app start-up); the
        # max age applies once it has beaten. Defaults to the max age.
        self.heartbeat_startup = heartbeat_startup
        self.on_exit = on_exit
        self._stop = threading.Event()
        self._stopping = threading.Event()

    def request_stop(self, sig: int | None = None, _frame: FrameType | None = None) -> None:
        if sig is not None:
            log.info("supervisor_stopping", signal=signal.Signals(sig).name)
        if self._stopping.is_set():
            # A second signal while the children stop: pass it on, so that they skip
            # the rest of their drain or finish at once, as they would on their own.
            for child in self.children:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
        self._stop.set()

    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        # The child inherits this thread's signal mask. A stop signal that reaches the
        # supervisor meanwhile is handled by it as soon as the mask is restored.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if child.spec.block_stop_signals else None
        try:
            child.process = subprocess.Popen(  # noqa: S603 - argv is built by us, never from user input
                list(child.spec.argv), env=env, start_new_session=True, pass_fds=child.spec.pass_fds
            )
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("child_started", child=child.spec.name, pid=child.process.pid, restarts=child.restarts)

    def _check_heartbeat(self, child: _Child, now: float) -> None:
        """Kill a child that has stopped making progress; it is then restarted like any other."""
        process, path, max_age = child.process, child.spec.heartbeat, self.heartbeat_max_age
        if process is None or path is None or max_age is None or process.poll() is not None:
            return
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            # No beat yet: the child is still starting, which on a busy machine (or
            # under a pod's CPU limit, with its siblings importing at the same time)
            # can take longer than a stall.
            age = now - child.started_at
            max_age = max(max_age, self.heartbeat_startup or 0.0)
        if age > max_age and now - child.started_at > max_age:
            log.error("child_stalled", child=child.spec.name, pid=process.pid, stalled_seconds=round(age, 1))
            process.kill()

    def _reap(self, child: _Child, now: float) -> None:
        process = child.process
        if process is None or process.poll() is None:
            return
        if self.on_exit is not None:
            self.on_exit(process.pid)
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
                    self._check_heartbeat(child, now)
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
        self._stopping.set()
        # Every child with a process, including one that has exited since the last
        # reap: its exit is logged here rather than never.
        stopping = [(c.spec.name, c.process) for c in self.children if c.process is not None]
        for _, process in stopping:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for name, process in stopping:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child_killed", child=name, pid=process.pid, reason="did not stop in time")
                process.kill()
                process.wait()
            # 0 for a child that stopped as asked; negative for one that died of a signal.
            stopped = log.info if process.returncode == 0 else log.warning
            stopped("child_stopped", child=name, pid=process.pid, exit_code=process.returncode)
        if self.on_exit is not None:
            for _, process in stopping:
                self.on_exit(process.pid)
        log.info("supervisor_stopped")
