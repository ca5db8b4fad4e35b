"""What every ``bourse bench`` benchmark shares: processes, the timed window, figures, output.

- :func:`run_processes` runs one function in C worker processes (spawned, not
  forked or threaded, so Python's GIL stays out of the measurement). Each one
  warms up (opens its connections), says it is ready through its
  :class:`Start`, and waits; the clock starts when all are ready and the harness
  gives one shared go. Each reports a :class:`Tally` when its window is over.
- :class:`Children` starts our own commands (``python -m bourse serve``,
  ``worker``, ``psp-sim``) or a peer's (``rq worker``) as child processes, each
  in its own session with its own log, stops them together, and accounts the
  CPU time each role spent (with its descendants, the client, and PostgreSQL).
- :func:`percentile`, :func:`latency_ms` and :func:`machine` are the figures;
  :func:`emit` prints the result as one JSON object or as text.
- :func:`command_settings` and :func:`check_database` read the settings and
  check the database as every ``bourse`` command does (the one place the
  benchmarks use the command's support).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import click

from bourse.cli_support import check_cli_database, load_cli_settings

if TYPE_CHECKING:
    from bourse.settings import Settings

# How many errors each worker process keeps as samples, and a run reports.
WORKER_SAMPLES = 3
RUN_SAMPLES = 5


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def latency_ms(latencies: Sequence[float], q: float, digits: int = 2) -> float:
    """The ``q`` quantile of ``latencies`` (seconds) in milliseconds, rounded."""
    return round(percentile(latencies, q) * 1000, digits)


def machine() -> dict[str, Any]:
    """What a benchmark ran on, for docs/benchmarks.md."""
    model = "unknown"
    mem_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def command_settings(*, check: bool = True) -> Settings:
    """The settings as the ``bourse`` command reads them; with ``check``, the database
    must answer and be migrated (else the command exits with the reason)."""
    settings = load_cli_settings(service=True)
    if check:
        check_database(settings)
    return settings


def check_database(settings: Settings) -> None:
    """Exit with the reason unless the configured database answers and is migrated."""
    check_cli_database(settings)


def emit(
    result: Mapping[str, Any], as_json: bool, *, indent: int | None = None, summary: str | None = None, width: int = 22
) -> None:
    """Print ``result``: one JSON object with ``--json``; else ``summary``, or one line per key."""
    if as_json:
        click.echo(json.dumps(result, indent=indent))
    elif summary is not None:
        click.echo(summary)
    else:
        for key, value in result.items():
            click.echo(f"{key:>{width}}: {value}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
seconds_option = click.option(
    "--seconds", type=click.FloatRange(1, 3600), default=20, show_default=True, help="How long to measure."
)


# -- Worker processes ----------------------------------------------------------------------


@dataclass
class Tally:
    """What one worker process measured: the latencies of what succeeded, and its errors."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    # The first few errors, so a run that had any says what they were.
    samples: list[str] = field(default_factory=list)

    def error(self, sample: str) -> None:
        self.errors += 1
        if len(self.samples) < WORKER_SAMPLES:
            self.samples.append(sample)


@dataclass(frozen=True)
class Start:
    """A worker process's side of the shared start (picklable into a spawned process)."""

    ready: Any
    go: Any
    results: Any

    def wait(self, seed: int, seconds: float) -> float:
        """Say this worker is warm, wait for the shared go; the deadline on ``time.perf_counter``."""
        self.ready.put(seed)
        self.go.wait()
        return time.perf_counter() + seconds

    def report(self, tally: Tally) -> None:
        self.results.put(tally)


T = TypeVar("T", bound=Tally)


@dataclass(frozen=True)
class Run(Generic[T]):
    tallies: list[T]
    elapsed: float

    @property
    def latencies(self) -> list[float]:
        return [value for tally in self.tallies for value in tally.latencies]

    @property
    def errors(self) -> int:
        return sum(tally.errors for tally in self.tallies)

    @property
    def error_samples(self) -> list[str]:
        return [sample for tally in self.tallies for sample in tally.samples][:RUN_SAMPLES]


def run_processes(target: Callable[..., None], args: Sequence[tuple[Any, ...]], seconds: float) -> Run[Any]:
    """Run ``target(*args[i], seconds, i, start)`` in one spawned process per ``args[i]``.

    Each process warms up, then calls ``start.wait(i, seconds)`` for its deadline,
    works until it, and ``start.report(tally)``. Elapsed time counts from the
    shared go to the last report.
    """
    context = multiprocessing.get_context("spawn")
    start = Start(ready=context.Queue(), go=context.Event(), results=context.Queue())
    processes = [
        context.Process(target=target, args=(*arguments, seconds, i, start), daemon=True)
        for i, arguments in enumerate(args)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        _get(start.ready, processes, timeout=120, stage="ready")
    started = time.perf_counter()
    start.go.set()
    tallies: list[Any] = [_get(start.results, processes, timeout=seconds + 120, stage="done") for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(timeout=30)
    return Run(tallies, elapsed)


def _get(queue: Any, processes: Sequence[Any], *, timeout: float, stage: str) -> Any:
    """The next item of ``queue``; fails at once when a worker process has died without one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return queue.get(timeout=0.5)
        except Empty:
            dead = [process.exitcode for process in processes if process.exitcode not in {None, 0}]
            if dead:
                raise click.ClickException(
                    f"a worker process exited before it was {stage} (exit code {dead[0]}); its error is above"
                ) from None
            if time.monotonic() > deadline:
                raise click.ClickException(f"the worker processes were not {stage} within {timeout:.0f} s") from None


# -- Child commands ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bourse_command(*args: str) -> list[str]:
    """The argv of ``bourse ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "bourse", *args]


class Children:
    """Child processes of a benchmark, each in its own session, stopped together.

    Use as a context manager, or call :meth:`stop`. A child's output goes to
    ``logs/<name>.log`` when ``logs`` is given, else nowhere.
    """

    def __init__(self, env: Mapping[str, str], logs: Path | None = None) -> None:
        self.env = dict(env)
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.roles: list[str] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, role: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name``; its CPU time is counted under ``role`` (default: ``name``)."""
        environment = {**self.env, **(env or {})}
        if self.logs is None:
            process = subprocess.Popen(  # noqa: S603 - our own commands and the peer baseline's, fixed argv
                argv, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        else:
            with (self.logs / f"{name}.log").open("ab") as log:
                process = subprocess.Popen(  # noqa: S603 - as above
                    argv, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        self.processes.append(process)
        self.roles.append(role or name)
        return process

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each role, with its descendants
        (a worker's job runner), this benchmark's own client, and PostgreSQL's
        server processes when they run on this machine."""
        totals: dict[str, float] = {}
        for role, process in zip(self.roles, self.processes, strict=True):
            totals[role] = totals.get(role, 0.0) + tree_cpu(process.pid)
        me = _psutil().Process().cpu_times()
        totals["bench client"] = me.user + me.system
        postgres = _cpu(
            p for p in _psutil().process_iter(["name"]) if (p.info.get("name") or "").startswith("postgres")
        )
        if postgres:
            totals["postgresql"] = postgres
        return totals

    def stop(self) -> None:
        """SIGTERM every child's session that still runs; SIGKILL what outlives 20 s."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants; 0 once it is gone."""
    psutil = _psutil()
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    return _cpu(processes)


def _cpu(processes: Iterable[Any]) -> float:
    psutil = _psutil()
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _psutil() -> Any:
    import psutil  # type: ignore[import-untyped]

    return psutil
