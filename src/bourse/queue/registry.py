"""Job and scheduled-task declarations, looked up by stable names.

A job is stored by *name*, never by import path, so renaming or moving a handler
does not strand queued jobs, and a payload naming an unknown job is a clear
failure (it goes to ``queue_failed_jobs``) rather than an import of arbitrary code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

import bourse
from bourse.settings import Settings, load_settings

QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
JOB_NAME_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,199}$")
DEFAULT_QUEUE = "default"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class RegistryError(ValueError):
    """A job or task declaration is invalid (a programming error, found at import)."""


@dataclass(frozen=True)
class JobContext:
    """What a handler receives: its transaction, its payload and who it is.

    ``job_id`` is stable across retries of the same job, so a handler can use it
    as an idempotency key; ``attempt`` counts from 1. ``settings`` are the worker's
    (handlers that call out, to a payment provider say, need them); ``None`` only
    where a handler is called directly, and then :meth:`settings_of` loads them.
    """

    session: Session
    payload: Mapping[str, Any]
    job_id: str
    attempt: int
    queue: str
    request_id: str | None
    settings: Settings | None = None

    def settings_of(self) -> Settings:
        return self.settings if self.settings is not None else load_settings()


Handler = Callable[[JobContext], None]


@dataclass(frozen=True)
class JobSpec:
    """A declared job. ``None`` for tries/timeout/backoff means "the worker's flag"."""

    name: str
    handler: Handler = field(repr=False)
    queue: str = DEFAULT_QUEUE
    tries: int | None = None
    timeout: float | None = None
    backoff: tuple[float, ...] | None = None
    unique: Callable[[Mapping[str, Any]], str] | None = field(default=None, repr=False)
    module: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """A scheduled task. It runs in one transaction and should only enqueue jobs."""

    name: str
    cron: str
    func: Callable[[Session], None] = field(repr=False)
    on_one_server: bool = False
    without_overlapping: bool = False
    # How long a without_overlapping lease lasts if its holder never releases it.
    lease_seconds: int = 3600


JOBS: dict[str, JobSpec] = {}
TASKS: dict[str, TaskSpec] = {}


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME_RE.match(name):
        raise RegistryError(f"invalid queue name {name!r}: lower-case letters, digits, '_' and '-', at most 64")
    return name


def job(
    name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    tries: int | None = None,
    timeout: float | None = None,
    backoff: tuple[float, ...] | None = None,
    unique: Callable[[Mapping[str, Any]], str] | None = None,
) -> Callable[[Handler], JobSpec]:
    """Declare a job handler under a stable ``name``.

    ``unique`` maps a payload to a key: while a job with that key is pending or
    running, enqueueing another one with the same key does nothing.
    """
    if not JOB_NAME_RE.match(name):
        raise RegistryError(f"invalid job name {name!r}")
    check_queue_name(queue)
    if tries is not None and tries < 0:
        raise RegistryError(f"job {name}: tries must be 0 (unlimited) or more")
    if timeout is not None and timeout <= 0:
        raise RegistryError(f"job {name}: timeout must be positive")
    if backoff is not None and (not backoff or any(b < 0 for b in backoff)):
        raise RegistryError(f"job {name}: backoff must be a non-empty list of non-negative seconds")

    def register(handler: Handler) -> JobSpec:
        spec = JobSpec(name, handler, queue, tries, timeout, backoff, unique, module=handler.__module__)
        existing = JOBS.get(name)
        if existing is not None and existing.module != spec.module:
            raise RegistryError(f"job name {name!r} is declared twice ({existing.module} and {spec.module})")
        JOBS[name] = spec
        return spec

    return register


def task(
    cron: str,
    *,
    name: str,
    on_one_server: bool = False,
    without_overlapping: bool = False,
    lease_seconds: int = 3600,
) -> Callable[[Callable[[Session], None]], TaskSpec]:
    """Declare a scheduled task with a five-field cron expression (UTC)."""
    from cronsim import CronSim, CronSimError  # noqa: PLC0415 - only needed when tasks are declared

    try:
        CronSim(cron, _EPOCH)
    except CronSimError as exc:
        raise RegistryError(f"task {name}: invalid cron expression {cron!r}: {exc}") from None
    if not JOB_NAME_RE.match(name):
        raise RegistryError(f"invalid task name {name!r}")

    def register(func: Callable[[Session], None]) -> TaskSpec:
        spec = TaskSpec(name, cron, func, on_one_server, without_overlapping, lease_seconds)
        TASKS[name] = spec
        return spec

    return register


def _import_all(leaf: str) -> None:
    for module in pkgutil.walk_packages(bourse.__path__, prefix="bourse."):
        if module.name.rsplit(".", 1)[-1] == leaf:
            importlib.import_module(module.name)


def load_jobs(extra_modules: tuple[str, ...] = ()) -> dict[str, JobSpec]:
    """Import every ``bourse.<pkg>.jobs`` module (and ``extra_modules``); the registry."""
    _import_all("jobs")
    for name in extra_modules:
        importlib.import_module(name)
    return JOBS


def load_tasks(extra_modules: tuple[str, ...] = ()) -> dict[str, TaskSpec]:
    """Import every ``bourse.<pkg>.schedules`` module (and ``extra_modules``); the task table."""
    _import_all("schedules")
    for name in extra_modules:
        importlib.import_module(name)
    return TASKS
