"""CLI: ``bourse worker``, ``bourse scheduler``, ``bourse schedule run|list`` and ``bourse jobs ...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from bourse.cli_support import check_cli_database, load_cli_settings, open_cli_database

if TYPE_CHECKING:
    from bourse.db import Database
    from bourse.settings import Settings

EXIT_CONFIG = 2


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"bourse: {message}", err=True)
    sys.exit(code)


def _settings(*, service: bool = False) -> Settings:
    return load_cli_settings(service=service)


def _database(settings: Settings, name: str) -> Database:
    return open_cli_database(settings, name=name)


@click.command()
@click.option(
    "--queue",
    "queue_list",
    default="deposits,withdrawals,commissions,default",
    show_default=True,
    help="Queues in strict priority order: each reservation takes from the first non-empty one.",
)
@click.option(
    "--tries", type=click.IntRange(min=0), default=1, show_default=True, help="Attempts per job (0 = no limit)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds before a job is killed.",
)
@click.option(
    "--memory",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Exit with code 12 after a job if the RSS of the worker and its job runner exceeds this many MiB.",
)
@click.option(
    "--sleep",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help=(
        "Longest wait when every queue is empty. On PostgreSQL (not behind a transaction pooler)"
        " an enqueue's commit wakes the worker at once; a delayed job due sooner ends the wait then."
    ),
)
@click.option(
    "--backoff", default="0", show_default=True, help="Seconds before each retry, e.g. 10,60,300 (the last repeats)."
)
@click.option("--max-jobs", type=click.IntRange(min=0), default=0, help="Exit after this many jobs (0 = no limit).")
@click.option(
    "--max-time", type=click.FloatRange(min=0), default=0.0, help="Exit after this many seconds (0 = no limit)."
)
@click.option("--once", is_flag=True, help="Process at most one job, then exit.")
@click.option("--stop-when-empty", is_flag=True, help="Exit once every queue is empty.")
@click.option("--import", "modules", multiple=True, help="Also import this module of jobs (repeatable).")
@click.option("--latency-file", type=click.Path(path_type=Path), default=None, hidden=True)
def worker(  # noqa: PLR0917 - one parameter per click option
    queue_list: str,
    tries: int,
    timeout: float,
    memory: int,
    sleep: float,
    backoff: str,
    max_jobs: int,
    max_time: float,
    once: bool,
    stop_when_empty: bool,
    modules: tuple[str, ...],
    latency_file: Path | None,
) -> None:
    """Run queued jobs until SIGTERM (exit 0), or exit 12 when over --memory."""
    from bourse.queue.registry import load_jobs
    from bourse.queue.worker import (
        DEFAULT_QUEUES,
        WorkerConfigError,
        WorkerOptions,
        parse_backoff,
        parse_queues,
        run_worker,
    )

    settings = _settings(service=True)
    check_cli_database(settings)
    try:
        queues = parse_queues(queue_list)
        delays = parse_backoff(backoff)
        jobs = load_jobs(modules)
        known = set(DEFAULT_QUEUES) | {spec.queue for spec in jobs.values()}
        unknown = [q for q in queues if q not in known]
        if unknown:
            _fail(f"--queue: unknown queue {', '.join(unknown)}; no job uses it (known: {', '.join(sorted(known))})")
        options = WorkerOptions(
            queues=queues,
            tries=tries,
            timeout=timeout,
            memory_mib=memory,
            sleep=sleep,
            backoff=delays,
            max_jobs=max_jobs,
            max_time=max_time,
            once=once,
            stop_when_empty=stop_when_empty,
            modules=modules,
            latency_file=latency_file,
        )
        code = run_worker(settings, options)
    except WorkerConfigError as exc:
        _fail(str(exc))
    sys.exit(code)


@click.command()
@click.option("--import", "modules", multiple=True, help="Also import this module of tasks (repeatable).")
def scheduler(modules: tuple[str, ...]) -> None:
    """Run scheduled tasks every minute until SIGTERM."""
    from bourse.queue import metrics
    from bourse.queue.drivers import make_driver
    from bourse.queue.heartbeat import ProcessHeartbeat
    from bourse.queue.registry import load_jobs, load_tasks
    from bourse.queue.scheduler import Scheduler, SchedulerProcess

    settings = _settings(service=True)
    db = _database(settings, "scheduler")
    load_jobs()
    tasks = load_tasks(modules)
    driver = make_driver(settings, db)
    try:
        metrics.serve_metrics(settings.host, settings.scheduler_metrics_port, lambda: driver.depths(()))
        heartbeat = ProcessHeartbeat(db, "scheduler", settings.scheduler_heartbeat_path)
        code = SchedulerProcess(Scheduler(db, dict(tasks)), heartbeat).run()
    finally:
        driver.close()
        db.dispose()
    sys.exit(code)


@click.group()
def schedule() -> None:
    """Run or list the scheduled tasks."""


@schedule.command("run")
@click.option("--import", "modules", multiple=True, help="Also import this module of tasks (repeatable).")
def schedule_run(modules: tuple[str, ...]) -> None:
    """Run the tasks due this minute once, then exit (for a Kubernetes CronJob)."""
    from bourse.queue.registry import load_jobs, load_tasks
    from bourse.queue.scheduler import Scheduler

    settings = _settings(service=True)
    db = _database(settings, "scheduler")
    load_jobs()
    try:
        outcomes = Scheduler(db, dict(load_tasks(modules))).tick()
    finally:
        db.dispose()
    for outcome in outcomes:
        click.echo(f"{outcome.task}  {outcome.slot.isoformat()}  {outcome.status}")
    sys.exit(1 if any(o.status == "failed" for o in outcomes) else 0)


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedule_list(as_json: bool) -> None:
    """List the scheduled tasks with their cron expression, flags and next run (UTC)."""
    from bourse.queue.registry import load_tasks
    from bourse.queue.scheduler import describe

    _settings()
    rows = describe(load_tasks().values())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        flags = ",".join(f for f in ("on_one_server", "without_overlapping") if row[f]) or "-"
        click.echo(f"{row['task']:<32} {row['cron']:<16} {flags:<34} next {row['next_run']}")


@click.group()
def jobs() -> None:
    """Inspect queues and manage failed jobs."""


@jobs.command("failed")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with tracebacks).")
def jobs_failed(limit: int, as_json: bool) -> None:
    """List failed jobs, newest first."""
    from bourse.db import unit_of_work
    from bourse.queue.operations import list_failed

    db = _database(_settings(), "cli")
    with unit_of_work(db) as session:
        rows = list_failed(session, limit=limit)
    db.dispose()
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    if not rows:
        click.echo("no failed jobs")
        return
    click.echo(f"{'id':<8} {'uuid':<36}  {'queue':<12} {'job':<32} {'failed at':<32}  exception")
    for row in rows:
        click.echo(f"{row.id:<8} {row.uuid}  {row.queue:<12} {row.job:<32} {row.failed_at!s:<32}  {row.exception[:80]}")


@jobs.command("retry")
@click.argument("ident")
def jobs_retry(ident: str) -> None:
    """Put a failed job (id or uuid), or `all`, back on its queue."""
    from bourse.db import unit_of_work
    from bourse.queue.operations import FailedJobNotFound, retry

    db = _database(_settings(), "cli")
    try:
        with unit_of_work(db) as session:
            ids = retry(session, ident)
    except FailedJobNotFound as exc:
        _fail(exc.detail, 1)
    finally:
        db.dispose()
    click.echo(f"requeued {len(ids)} job(s)")


@jobs.command("forget")
@click.argument("ident")
def jobs_forget(ident: str) -> None:
    """Delete one failed job (id or uuid)."""
    from bourse.db import unit_of_work
    from bourse.queue.operations import FailedJobNotFound, forget

    db = _database(_settings(), "cli")
    try:
        with unit_of_work(db) as session:
            forget(session, ident)
    except FailedJobNotFound as exc:
        _fail(exc.detail, 1)
    finally:
        db.dispose()
    click.echo("forgotten")


@jobs.command("flush")
def jobs_flush() -> None:
    """Delete every failed job."""
    from bourse.db import unit_of_work
    from bourse.queue.operations import flush

    db = _database(_settings(), "cli")
    with unit_of_work(db) as session:
        count = flush(session)
    db.dispose()
    click.echo(f"flushed {count} failed job(s)")


@jobs.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs_stats(as_json: bool) -> None:
    """Depth and oldest job age per queue, failed jobs, live and busy workers."""
    from bourse.db import unit_of_work
    from bourse.queue.drivers import make_driver
    from bourse.queue.operations import stats
    from bourse.queue.worker import DEFAULT_QUEUES

    settings = _settings()
    db = _database(settings, "cli")
    driver = make_driver(settings, db)
    try:
        with unit_of_work(db) as session:
            result = stats(session, driver, DEFAULT_QUEUES)
    finally:
        driver.close()
        db.dispose()
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"{'queue':<16} {'ready':>8} {'delayed':>8} {'reserved':>9} {'oldest (s)':>11}")
    for q in result.queues:
        click.echo(
            f"{q['queue']!s:<16} {q['ready']!s:>8} {q['delayed']!s:>8} {q['reserved']!s:>9}"
            f" {q['oldest_job_age_seconds']!s:>11}"
        )
    click.echo(f"failed jobs: {result.failed}")
    click.echo(f"workers: {result.workers} live, {result.busy_workers} busy")
    click.echo(f"last end-to-end heartbeat job: {result.pipeline_heartbeat_at or 'never'}")
