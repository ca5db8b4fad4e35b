"""Running the API under uvicorn with a readiness drain before shutdown.

On the first SIGTERM or SIGINT the server starts draining: ``/readyz`` turns 503
so the load balancer stops routing here, while requests (new and in flight) are
still served for ``BOURSE_SHUTDOWN_DRAIN_SECONDS``. Then it stops accepting,
gives in-flight requests up to ``BOURSE_SHUTDOWN_TIMEOUT_SECONDS`` to finish, and
returns, so the process exits 0. A second signal skips the rest of the drain and
the wait.

A server process of ``serve --workers`` can get its SIGTERM while it is still
starting (the pod stopped soon after it started, or soon after the process was
restarted). It is started with the signal blocked, and :func:`hold_stop_signals`
keeps what arrives until the server handles signals, which then drains as if the
signal had come that moment: no server process is ever ended by the default
action of SIGTERM, which would leave it dead by the signal, without a drain or a
log line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess, start_http_server
from typing_extensions import override

from bourse import lifecycle
from bourse.logging import get_logger
from bourse.settings import Settings
from bourse.supervisor import ChildSpec, Supervisor

log = get_logger("bourse.server")

SERVE_ARGV = (sys.executable, "-m", "bourse", "serve")
STREAM_ARGV = (sys.executable, "-m", "bourse", "stream")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# prometheus-client's multiprocess folder (bourse.metrics.MULTIPROCESS_DIR_ENV; not
# imported from there, because importing bourse.metrics opens files in the folder).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# uvicorn's default listen backlog.
BACKLOG = 2048
# Beyond drain + shutdown timeout, before a server process that has not exited is killed.
STOP_MARGIN_SECONDS = 3
# How long a server process may take to start (its first liveness heartbeat) before
# the supervisor counts it as stalled; the pod's startup probe bounds the whole pod.
STARTUP_SECONDS = 120
# The signals that stop a server (uvicorn's), blocked in a server process of
# --workers from its start until hold_stop_signals().
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Stop signals that came before the server handled signals, oldest first.
_held_signals: list[int] = []


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    @override
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        with super().capture_signals():
            # From here on the server handles the signals: those held while the
            # process was starting are handled now, in the order they came.
            while _held_signals:
                self.handle_exit(_held_signals.pop(0), None)
            yield

    @override
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not recording the signal: uvicorn would re-raise it after
        # shutdown, and the process would die by signal instead of exiting 0.
        if lifecycle.is_draining():
            log.warning("shutdown_forced", signal=signal.Signals(sig).name, pid=os.getpid())
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self.should_exit = True
            self.force_exit = True
            return
        lifecycle.start_draining()
        log.info(
            "shutdown_draining", signal=signal.Signals(sig).name, drain_seconds=self.drain_seconds, pid=os.getpid()
        )
        if self.drain_seconds <= 0:
            self.should_exit = True
            return
        self._drain_timer = threading.Timer(self.drain_seconds, self._stop_accepting)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _stop_accepting(self) -> None:
        log.info("shutdown_stopping", timeout_seconds=self.config.timeout_graceful_shutdown, pid=os.getpid())
        self.should_exit = True


# Any ASGI application (the API's FastAPI app): the server knows no web framework.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def run_server(app: ASGIApp, settings: Settings, *, host: str, port: int, sock: socket.socket | None = None) -> bool:
    """Serve until shut down. Returns False if the server failed to start.

    With ``sock`` (a process of ``serve --workers``) it serves on that inherited
    listening socket, and the parent serves the metrics port.
    """
    lifecycle.reset()
    if settings.metrics_port is not None and sock is None:
        start_http_server(settings.metrics_port, addr=host)
        log.info("metrics_listening", host=host, port=settings.metrics_port)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        # Always our own list: uvicorn would otherwise read FORWARDED_ALLOW_IPS.
        proxy_headers=True,
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
        lifespan="on",
        # No permessage-deflate on the market-data WebSocket: each connection would compress
        # every message again with a context of its own, so a fan-out to S subscribers
        # paid S compressions per message, for messages of a few hundred bytes
        # (docs/decisions/0028-stream-process.md).
        ws_per_message_deflate=False,
    )
    server = DrainingServer(config, drain_seconds=settings.shutdown_drain_seconds)
    server.run(sockets=None if sock is None else [sock])
    return server.started


def run_server_processes(
    settings: Settings, *, host: str, port: int, workers: int, command: Sequence[str] = SERVE_ARGV
) -> int:
    """``bourse serve --workers N``: N server processes on one listening socket.

    ``command`` is the server process's argv before its options (``bourse stream`` passes
    its own). This process binds the socket, starts the N processes (``bourse serve --fd``)
    under the :class:`~bourse.supervisor.Supervisor`, serves the metrics port if one
    is set, and on SIGTERM passes the signal on: each process drains and stops as a
    single server does, within ``BOURSE_SHUTDOWN_DRAIN_SECONDS`` +
    ``BOURSE_SHUTDOWN_TIMEOUT_SECONDS``. A process that dies is restarted; one whose
    worker threads stop making progress for ``BOURSE_LIVENESS_STALL_SECONDS`` is
    killed and restarted. Metrics are written by every process to a fresh
    ``PROMETHEUS_MULTIPROC_DIR`` and served summed.
    """
    sock = _bind(host, port)
    if sock is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="bourse-serve-"))
    heartbeats = work / "heartbeats"
    heartbeats.mkdir()
    metrics_dir = _metrics_dir(work)
    os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
    fd = sock.fileno()
    argv = [*command, "--fd", str(fd), "--parent-pid", str(os.getpid()), "--heartbeat-file"]
    specs = [
        ChildSpec(
            f"server-{index}",
            [*argv, str(heartbeats / str(index))],
            env={MULTIPROCESS_DIR_ENV: str(metrics_dir)},
            pass_fds=(fd,),
            heartbeat=heartbeats / str(index),
            block_stop_signals=True,
        )
        for index in range(workers)
    ]
    # Only now, with the folder in place: prometheus-client opens its files in the
    # folder as soon as bourse.metrics defines its metrics.
    from bourse.metrics import metrics_registry  # noqa: PLC0415

    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=host, registry=metrics_registry())
        log.info("metrics_listening", host=host, port=settings.metrics_port, processes=workers)
    supervisor = Supervisor(
        specs,
        stop_timeout=settings.shutdown_drain_seconds + settings.shutdown_timeout_seconds + STOP_MARGIN_SECONDS,
        heartbeat_max_age=settings.liveness_stall_seconds,
        heartbeat_startup=STARTUP_SECONDS,
        on_exit=lambda pid: multiprocess.mark_process_dead(pid, str(metrics_dir)),  # type: ignore[no-untyped-call]
    )
    log.info("server_processes_starting", host=host, port=port, processes=workers)
    try:
        return supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(work, ignore_errors=True)


def hold_stop_signals() -> None:
    """From now until the server handles them, keep SIGTERM and SIGINT for the server
    (which then drains as if they came at that moment) instead of dying of them.

    Called first thing in a server process of ``--workers``, which its supervisor
    starts with these signals blocked (``ChildSpec.block_stop_signals``): one sent
    while the interpreter was still starting has waited, and is kept now. A second
    one before the server handles signals stops the process at once, as a second
    signal does while it drains. Once the server has returned (uvicorn puts this
    handler back), a signal is kept and ignored: the process is exiting anyway.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _hold_stop_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _hold_stop_signal(sig: int, _frame: FrameType | None) -> None:
    if _held_signals:
        sys.exit(0)
    _held_signals.append(sig)


def die_with_parent(parent: int) -> None:
    """Make this server process of ``--workers`` get SIGTERM when its parent dies
    (Linux), so a parent killed outright never leaves processes serving unsupervised.

    Called right after :func:`hold_stop_signals`, before the app is imported;
    ``parent`` is the pid the parent passed, so a parent that died even before this
    call is noticed too.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _metrics_dir(work: Path) -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` if the environment names one (emptied of an earlier
    run's files), else a fresh folder under ``work``."""
    named = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not named:
        path = work / "metrics"
        path.mkdir()
        return path
    path = Path(named)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


def _bind(host: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        log.error("bind_failed", host=host, port=port, error=str(exc))  # noqa: TRY400 - the reason is enough
        sock.close()
        return None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock
