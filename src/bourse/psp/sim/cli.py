"""``bourse psp-sim``: run the PSP simulator (uvicorn, one process, asyncio).

The API key and the webhook secret come from Bourse's own settings
(``BOURSE_PSP_API_KEY``, ``BOURSE_PSP_SECRET``), so a local Bourse and its
simulator agree without extra configuration. They are never logged.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from bourse.cli_support import load_cli_settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/api/v1/psp/simulator/webhook"
SHUTDOWN_TIMEOUT_SECONDS = 5


def _http_url(_: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL", param=param)
    return value


@click.command("psp-sim")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="Port to bind.")
@click.option(
    "--webhook-url",
    default=DEFAULT_WEBHOOK_URL,
    show_default=True,
    callback=_http_url,
    help="Where events are POSTed.",
)
@click.option(
    "--public-url",
    default=None,
    callback=_http_url,
    help="Base URL of checkout links, as the payer's browser reaches this service. [default: http://HOST:PORT]",
)
def psp_sim(host: str, port: int, webhook_url: str, public_url: str | None) -> None:
    """Run the PSP simulator (state in memory) until SIGTERM or SIGINT."""
    import signal
    import socket
    import sys
    from types import FrameType

    import uvicorn
    from typing_extensions import override

    from bourse.logging import get_logger
    from bourse.psp.sim.app import SimConfig, create_app

    if not host:
        raise click.BadParameter("must not be empty", param_hint="'--host'")
    settings = load_cli_settings(service=True)
    log = get_logger("bourse.psp.sim")
    public = (public_url or f"http://{host}:{port}").rstrip("/")
    config = SimConfig(
        api_key=settings.psp_api_key.get_secret_value(),
        webhook_secret=settings.psp_secret.get_secret_value(),
        webhook_url=webhook_url,
        public_url=public,
    )

    class SimServer(uvicorn.Server):
        @override
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                log.info("psp_sim_started", host=host, port=port, webhook_url=webhook_url, public_url=public)
                click.echo(f"psp-sim listening on http://{host}:{port}")

        @override
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not recording the signal: uvicorn would re-raise it after shutdown and
            # the process would die by signal instead of exiting 0. A second one forces.
            log.info("psp_sim_stopping", signal=signal.Signals(sig).name)
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    server = SimServer(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_SECONDS,
        )
    )
    try:
        server.run()
    except SystemExit:
        # uvicorn exits by itself (with its own codes) when it cannot bind; report it as 1.
        if server.started:
            raise
    sys.exit(0 if server.started else 1)
