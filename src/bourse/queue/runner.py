"""The worker's job runner: a child process that executes handlers, one at a time.

The worker (the parent) reserves jobs, hands each to this process over a pipe and
waits for the answer with the job's timeout. A job stuck in ``time.sleep`` or in a
long C call cannot be interrupted from inside Python, so at the timeout the parent
SIGKILLs this whole process and starts a new one. The runner is long-lived, so the
cost of starting it is paid once, not per job.

Protocol (JSON lines): the parent sends a configuration line, the runner answers
``{"ready": true}``; then one request line per job and one answer line each. The
runner's own stdout is moved to stderr first, so a handler's ``print`` can never
corrupt the protocol. The runner ignores SIGINT and SIGTERM (the parent decides
when it stops) and dies with its parent (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from typing import IO, Any

import structlog
from pydantic import SecretStr
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bourse.db import Database, create_db_engine, unit_of_work
from bourse.dberrors import describe
from bourse.logging import configure_logging, get_logger
from bourse.queue import metrics
from bourse.queue.database_driver import commit_asynchronously, complete_in
from bourse.queue.driver import ReservationLost
from bourse.queue.registry import JobContext, load_jobs
from bourse.settings import Settings

PR_SET_PDEATHSIG = 1
METRICS_INTERVAL = 1.0


def settings_payload(settings: Settings) -> dict[str, Any]:
    """The settings as plain values, secrets revealed, for the runner's private pipe."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        values[name] = value
    return values


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        # The parent died before the request above took effect.
        os._exit(1)


def _answer(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


class JobRunner:
    """Runs one job per request, each in its own transaction."""

    def __init__(self, settings: Settings, modules: tuple[str, ...]) -> None:
        before = metrics.family_names()
        self.jobs = load_jobs(modules)
        # The metrics the job modules registered, sent back to the worker to serve.
        self.metric_names = metrics.sample_names(metrics.family_names() - before)
        self._metrics_sent = 0.0
        self.settings = settings
        self.db = Database.from_settings(settings, name="runner")
        self.complete = settings.queue_driver == "database"
        self.acks: Engine | None = None
        self._ack_conn: Connection | None = None
        if self.complete and self.db.engine.dialect.name == "postgresql":
            self.acks = create_db_engine(settings, name="runner-acks")
            commit_asynchronously(self.acks, pooled=settings.database_transaction_pooling)

    def _finish(self, session: Session, job_id: str, token: str) -> None:
        if not self.complete:
            return  # Redis: the worker settles the job once we answer
        if self.acks is not None and not session.in_transaction():
            # The handler did not touch the database: the job's deletion is all there
            # is to commit, and losing it in a crash only reruns the job. One
            # autocommit statement, no wait for the WAL flush, on a kept connection.
            if self._ack_conn is None or self._ack_conn.closed or self._ack_conn.invalidated:
                self._ack_conn = self.acks.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                complete_in(self._ack_conn, job_id, token)
            except DBAPIError:
                self._ack_conn.close()
                self._ack_conn = None
                raise
        else:
            complete_in(session, job_id, token)

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = self.jobs[request["job"]]
        payload = json.loads(request["payload"])
        with unit_of_work(self.db) as session:
            spec.handler(
                JobContext(
                    session=session,
                    payload=payload,
                    job_id=request["id"],
                    attempt=request["attempt"],
                    queue=request["queue"],
                    request_id=request["request_id"],
                    settings=self.settings,
                )
            )
            self._finish(session, request["id"], request["token"])
        return {"ok": True}

    def with_metrics(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Attach the job metrics' current samples, at most once a second."""
        now = time.monotonic()
        if self.metric_names and now - self._metrics_sent >= METRICS_INTERVAL:
            self._metrics_sent = now
            answer["metrics"] = metrics.snapshot(self.metric_names)
        return answer

    def close(self) -> None:
        if self._ack_conn is not None:
            self._ack_conn.close()
        self.db.dispose()
        if self.acks is not None:
            self.acks.dispose()


def main() -> None:
    _die_with_parent(int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    config = json.loads(sys.stdin.readline())
    for path in reversed(config["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    settings = Settings(**config["settings"])
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("bourse.queue.runner")
    runner = JobRunner(settings, tuple(config["modules"]))
    _answer(protocol, {"ready": True, "pid": os.getpid()})

    for line in sys.stdin:
        request = json.loads(line)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request["request_id"],
            job=request["job"],
            job_id=request["id"],
            attempt=request["attempt"],
            queue=request["queue"],
        )
        try:
            answer = runner.run(request)
        except ReservationLost as exc:
            log.warning("job_reservation_lost", error=str(exc))
            answer = {"ok": False, "lost": True, "exception": f"ReservationLost: {exc}", "traceback": ""}
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any handler failure is reported to the worker
            answer = {
                "ok": False,
                "lost": False,
                "exception": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            transient = describe(exc)
            if transient is not None:
                # A deadlock, lock timeout or lost connection: the worker says so when it retries.
                answer["transient"] = transient
        finally:
            structlog.contextvars.clear_contextvars()
        _answer(protocol, runner.with_metrics(answer))
    runner.close()


if __name__ == "__main__":
    main()
