"""Running the API under uvicorn with a readiness drain before shutdown.

On the first SIGTERM or SIGINT the server starts draining: ``/readyz`` turns 503
so the load balancer stops routing here, while requests (new and in flight) are
still served for ``BOURSE_SHUTDOWN_DRAIN_SECONDS``. Then it stops accepting,
gives in-flight requests up to ``BOURSE_SHUTDOWN_TIMEOUT_SECONDS`` to finish, and
returns, so the process exits 0. A second signal skips the rest of the drain and
the wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI
from prometheus_client import start_http_server
from typing_extensions import override

from bourse import lifecycle
from bourse.logging import get_logger
from bourse.settings import Settings

log = get_logger("bourse.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    @override
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not recording the signal: uvicorn would re-raise it after
        # shutdown, and the process would die by signal instead of exiting 0.
        if lifecycle.is_draining():
            log.warning("shutdown_forced", signal=signal.Signals(sig).name)
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self.should_exit = True
            self.force_exit = True
            return
        lifecycle.start_draining()
        log.info("shutdown_draining", signal=signal.Signals(sig).name, drain_seconds=self.drain_seconds)
        if self.drain_seconds <= 0:
            self.should_exit = True
            return
        self._drain_timer = threading.Timer(self.drain_seconds, self._stop_accepting)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _stop_accepting(self) -> None:
        log.info("shutdown_stopping", timeout_seconds=self.config.timeout_graceful_shutdown)
        self.should_exit = True


def run_server(app: FastAPI, settings: Settings, *, host: str, port: int) -> bool:
    """Serve until shut down. Returns False if the server failed to start."""
    lifecycle.reset()
    if settings.metrics_port is not None:
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
    )
    server = DrainingServer(config, drain_seconds=settings.shutdown_drain_seconds)
    server.run()
    return server.started
