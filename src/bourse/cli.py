"""The ``bourse`` command.

Heavy modules are imported inside each command, and each domain's command group
(and the benchmarks) only when it is the one invoked: ``bourse healthcheck`` (an
exec probe every few seconds) and ``bourse serve`` import none of the others.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

import bourse
from bourse.cli_support import check_cli_database, configure_cli_logging, fail_config, read_settings

if TYPE_CHECKING:
    from bourse.settings import Settings

# Ctrl-C on `bourse up` stops everything within this many seconds.
UP_STOP_SECONDS = 9
# The refusal of a WebSocket fan-out that could not be fed (BOURSE_STREAM=external without Redis).
STREAM_UNAVAILABLE = "stream_unavailable"


def _probe_host(host: str) -> str:
    if host in {"", "0.0.0.0"}:  # noqa: S104 - mapping the wildcard address to loopback, not binding to it
        return "127.0.0.1"
    if host in {"::", "[::]"}:
        return "::1"
    return host


def http_status(host: str, port: int, path: str, timeout: float) -> int | None:
    """GET a local URL; the status code, or None if nothing answered in time."""
    import http.client

    connection = http.client.HTTPConnection(_probe_host(host), port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


host_option = click.option("--host", default=None, help="Interface to bind. [default: BOURSE_HOST]")
port_option = click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port to bind. [default: BOURSE_PORT]"
)


# The command groups that live beside their domains, by name: "module:attribute".
LAZY_COMMANDS = {
    "users": "bourse.identity.cli:users",
    "ledger": "bourse.ledger.cli:ledger",
    "assets": "bourse.ledger.cli:assets",
    "instruments": "bourse.trading.cli:instruments",
    "commissions": "bourse.commissions.cli:commissions",
    "worker": "bourse.queue.cli:worker",
    "scheduler": "bourse.queue.cli:scheduler",
    "matcher": "bourse.trading.cli:matcher",
    "schedule": "bourse.queue.cli:schedule",
    "jobs": "bourse.queue.cli:jobs",
    "psp-sim": "bourse.psp.sim.cli:psp_sim",
    "psp": "bourse.payments.cli:psp",
    "bench": "bourse.bench.commands:bench",
}


class LazyGroup(click.Group):
    """A group whose listed subcommands are imported only when looked up.

    ``bourse --help`` still lists every command with its help (it looks each one up);
    running one imports only the module that defines it.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise TypeError(f"{self.lazy[cmd_name]} is not the click command {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(bourse.__version__, prog_name="bourse")
def main() -> None:
    """Bourse: a trading platform for brokerages."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(bourse.__version__)


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_show(as_json: bool) -> None:
    """Print the effective configuration, secrets masked, with each value's source."""
    from bourse.settings import SettingsError, describe

    settings = read_settings()
    try:
        rows = describe(settings)
    except SettingsError as exc:
        fail_config(str(exc))
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    width = max(len(row.name) for row in rows)
    value_width = min(48, max(len(row.value) for row in rows))
    for row in rows:
        click.echo(f"{row.name:<{width}}  {row.value:<{value_width}}  {row.source}")


# What `bourse openapi` builds the app with: no database, Redis or matcher is reached,
# and nothing configured changes the schema (BOURSE_METRICS_PORT would drop /metrics).
# The database is a SQLite file in a scratch directory that is never opened.
OPENAPI_SETTINGS: dict[str, object] = {
    "env": "development",
    "redis_url": None,
    "metrics_port": None,
    "stream": "in-process",
    "matcher": "external",
}


def openapi_document() -> str:
    """The API's OpenAPI schema as JSON: sorted keys, two-space indent, a final newline."""
    from bourse.app import create_app
    from bourse.settings import SettingsError, load_settings

    with tempfile.TemporaryDirectory(prefix="bourse-openapi-") as scratch:
        try:
            settings = load_settings(**OPENAPI_SETTINGS, database_url=f"sqlite:///{scratch}/never-opened.db")
        except SettingsError as exc:
            fail_config(str(exc))
        app = create_app(settings)
        try:
            schema = app.openapi()
        finally:
            app.state.db.dispose()
            app.state.probe_db.dispose()
        assert not any(Path(scratch).iterdir()), "bourse openapi opened its database"  # noqa: S101
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@main.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the schema to FILE instead of standard output.",
)
def openapi(output: Path | None) -> None:
    """Print the API's OpenAPI schema (JSON), as /api/openapi.json serves it, without a database.

    The web UI generates its TypeScript types from it.
    """
    document = openapi_document()
    if output is None:
        click.echo(document, nl=False)
    else:
        output.write_text(document, encoding="utf-8")


@main.command()
@click.option("--revision", default="heads", show_default=True, help="Target revision.")
def migrate(revision: str) -> None:
    """Upgrade the database schema (to the latest revision by default)."""
    from bourse.migrations import upgrade

    settings = read_settings()
    configure_cli_logging(settings)
    _refuse_pooled_migrations(settings)
    _ensure_sqlite_dir(settings)
    check_cli_database(settings, require_migrated=False)
    upgrade(settings, revision)
    click.echo(f"database migrated to {revision}")


@main.command()
@host_option
@port_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes on the one port (default: BOURSE_SERVER_WORKERS).",
)
@click.option("--fd", type=int, default=None, hidden=True, help="Serve on this inherited socket (one of --workers).")
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option("--heartbeat-file", type=click.Path(path_type=Path), default=None, hidden=True)
def serve(  # noqa: PLR0917 - one parameter per click option
    host: str | None,
    port: int | None,
    workers: int | None,
    fd: int | None,
    parent_pid: int | None,
    heartbeat_file: Path | None,
) -> None:
    """Serve the HTTP API until SIGTERM or SIGINT."""
    import socket

    if parent_pid is not None:
        # A server process of --workers, started with the stop signals blocked.
        from bourse.server import die_with_parent, hold_stop_signals

        hold_stop_signals()
        die_with_parent(parent_pid)

    settings = read_settings()
    configure_cli_logging(settings)
    if settings.matcher == "in-process" and settings.direct_database is None:
        fail_config(
            "BOURSE_MATCHER: an in-process matcher needs PostgreSQL without a transaction pooler for its"
            " leadership lock: set BOURSE_DATABASE_DIRECT_URL, or BOURSE_MATCHER=external and run `bourse matcher`"
        )
    if settings.stream == "external" and settings.redis_url is None:
        fail_config(
            f"{STREAM_UNAVAILABLE}: BOURSE_STREAM=external: the API reaches the `bourse stream` processes through"
            " Redis only: set BOURSE_REDIS_URL, or BOURSE_STREAM=in-process to serve /api/v1/ws from the API"
        )
    host, port = host or settings.host, port or settings.port
    if fd is None and (workers or settings.server_workers) > 1:
        # The parent of the server processes never imports the app (nor bourse.metrics).
        from bourse.server import run_server_processes

        sys.exit(run_server_processes(settings, host=host, port=port, workers=workers or settings.server_workers))
    from bourse.app import create_app
    from bourse.server import run_server

    app = create_app(settings)
    if heartbeat_file is not None:
        app.state.progress.heartbeat_path = heartbeat_file
    sock = None if fd is None else socket.socket(fileno=fd)
    started = run_server(app, settings, host=host, port=port, sock=sock)
    sys.exit(0 if started else 1)


@main.command()
@host_option
@port_option
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes on the one port, each with its own Redis subscriber.",
)
@click.option("--fd", type=int, default=None, hidden=True, help="Serve on this inherited socket (one of --workers).")
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option("--heartbeat-file", type=click.Path(path_type=Path), default=None, hidden=True)
def stream(  # noqa: PLR0917 - one parameter per click option
    host: str | None,
    port: int | None,
    workers: int,
    fd: int | None,
    parent_pid: int | None,
    heartbeat_file: Path | None,
) -> None:
    """Serve the market-data WebSocket (/api/v1/ws) alone, fed by Redis, until SIGTERM or SIGINT.

    For BOURSE_STREAM=external: the API processes then spend no CPU on market data.
    Serves /livez, /readyz and /metrics too; needs BOURSE_REDIS_URL (exit 2 without).
    """
    import socket

    if parent_pid is not None:
        from bourse.server import die_with_parent, hold_stop_signals

        hold_stop_signals()
        die_with_parent(parent_pid)

    settings = read_settings()
    configure_cli_logging(settings)
    if settings.redis_url is None:
        fail_config(
            f"{STREAM_UNAVAILABLE}: `bourse stream` hears every committed command through Redis:"
            " set BOURSE_REDIS_URL (the same Redis and BOURSE_QUEUE_REDIS_PREFIX as the API and the matcher)"
        )
    host, port = host or settings.host, port or settings.port
    if fd is None and workers > 1:
        from bourse.server import STREAM_ARGV, run_server_processes

        sys.exit(run_server_processes(settings, host=host, port=port, workers=workers, command=STREAM_ARGV))
    from bourse.app import create_stream_app
    from bourse.server import run_server

    app = create_stream_app(settings)
    if heartbeat_file is not None:
        app.state.progress.heartbeat_path = heartbeat_file
    sock = None if fd is None else socket.socket(fileno=fd)
    started = run_server(app, settings, host=host, port=port, sock=sock)
    sys.exit(0 if started else 1)


@main.command()
@click.option("--ready", is_flag=True, help="Check readiness (/readyz) instead of liveness (/livez).")
@host_option
@port_option
@click.option("--timeout", type=click.FloatRange(0.1, 2.0), default=1.5, show_default=True, help="Seconds to wait.")
@click.option("--worker", "worker_probe", is_flag=True, help="Check the local queue worker's heartbeat file.")
@click.option("--scheduler", "scheduler_probe", is_flag=True, help="Check the local scheduler's heartbeat file.")
@click.option("--matcher", "matcher_probe", is_flag=True, help="Check the local matcher's heartbeat file.")
def healthcheck(  # noqa: PLR0917 - one parameter per click option
    ready: bool,
    host: str | None,
    port: int | None,
    timeout: float,
    worker_probe: bool,
    scheduler_probe: bool,
    matcher_probe: bool,
) -> None:
    """Exit 0 if the local server is alive (or ready), 1 if not, 2 if misconfigured. For probes."""
    settings = read_settings()
    if worker_probe or scheduler_probe or matcher_probe:
        # A heartbeat file, never the database: a database blip must not restart workers.
        if worker_probe:
            path = settings.worker_heartbeat_path
        elif scheduler_probe:
            path = settings.scheduler_heartbeat_path
        else:
            path = settings.matcher_heartbeat_path
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            sys.exit(1)
        sys.exit(0 if age <= settings.heartbeat_max_age_seconds else 1)
    status = http_status(host or settings.host, port or settings.port, "/readyz" if ready else "/livez", timeout)
    sys.exit(0 if status == HTTPStatus.OK else 1)


def _refuse_pooled_migrations(settings: Settings) -> None:
    """Migrations set a session lock_timeout and run DDL (some outside a transaction)
    that must share one server connection: never through a transaction pooler."""
    if settings.database_transaction_pooling:
        fail_config(
            "BOURSE_DATABASE_TRANSACTION_POOLING is set: migrations need a session of their own, so point"
            " BOURSE_DATABASE_URL at the PostgreSQL primary (not at PgBouncer) and unset it for `bourse migrate`"
        )


def _ensure_sqlite_dir(settings: Settings) -> None:
    database = settings.database
    if database.get_backend_name() == "sqlite" and database.database not in {None, "", ":memory:"}:
        Path(database.database or "").parent.mkdir(parents=True, exist_ok=True)


def _announce_when_ready(host: str, port: int, timeout: float = 60.0) -> Callable[[], None]:
    deadline = time.monotonic() + timeout
    announced = False

    def tick() -> None:
        nonlocal announced
        if announced or time.monotonic() > deadline:
            return
        if http_status(host, port, "/readyz", timeout=0.5) == HTTPStatus.OK:
            announced = True
            url = f"http://{_probe_host(host)}:{port}"
            click.echo(f"\nBourse is running at {url}  (API docs: {url}/api/docs)  Press Ctrl-C to stop.\n")

    return tick


@main.command()
@host_option
@port_option
def up(host: str | None, port: int | None) -> None:
    """Run everything on this machine: migrate, then the API, a worker and the scheduler under supervision."""
    from bourse.migrations import upgrade
    from bourse.supervisor import ChildSpec, Supervisor

    settings = read_settings()
    configure_cli_logging(settings)
    if settings.stream == "external":
        fail_config(
            "BOURSE_STREAM=external: `bourse up` runs no `bourse stream` process, so nothing would serve"
            " /api/v1/ws; unset it (run `bourse serve` and `bourse stream` yourself for the separate fan-out)"
        )
    _refuse_pooled_migrations(settings)
    _ensure_sqlite_dir(settings)
    check_cli_database(settings, require_migrated=False)
    upgrade(settings)
    host = host or settings.host
    port = port or settings.port
    bourse_cmd = [sys.executable, "-m", "bourse"]
    # No load balancer routes to an embedded run, so there is nothing to drain, and
    # in-flight requests get what fits in the supervisor's stop budget, so Ctrl-C
    # always ends everything within UP_STOP_SECONDS.
    api_env = {
        "BOURSE_SHUTDOWN_DRAIN_SECONDS": "0",
        "BOURSE_SHUTDOWN_TIMEOUT_SECONDS": str(min(settings.shutdown_timeout_seconds, UP_STOP_SECONDS - 2)),
    }
    # One worker on every queue in priority order, with the production flags. On
    # Ctrl-C a job still running after the stop budget is killed and runs again
    # after BOURSE_QUEUE_RETRY_AFTER_SECONDS (delivery is at least once).
    worker_argv = [*bourse_cmd, "worker", "--queue", "deposits,withdrawals,commissions,default"]
    worker_argv += ["--tries", "3", "--timeout", "120", "--memory", "384", "--sleep", "1"]
    children = [
        ChildSpec("api", [*bourse_cmd, "serve", "--host", host, "--port", str(port)], api_env),
        ChildSpec("worker", worker_argv),
        ChildSpec("scheduler", [*bourse_cmd, "scheduler"]),
    ]
    if "simulator" in settings.psp_connectors:
        # The built-in PSP simulator, so deposits and withdrawals work on one machine.
        sim = urlsplit(settings.psp_sim_url)
        sim_argv = [*bourse_cmd, "psp-sim", "--host", sim.hostname or "127.0.0.1", "--port", str(sim.port or 80)]
        sim_argv += ["--public-url", settings.psp_sim_url]
        sim_argv += ["--webhook-url", f"http://{_probe_host(host)}:{port}/api/v1/psp/simulator/webhook"]
        children.append(ChildSpec("psp-sim", sim_argv))
    supervisor = Supervisor(children, stop_timeout=UP_STOP_SECONDS - 1)
    sys.exit(supervisor.run(on_tick=_announce_when_ready(host, port)))
