"""``bourse scheduler`` and ``bourse schedule run``: cron tasks that enqueue jobs.

Every minute (UTC) the scheduler looks at each task declared with
:func:`bourse.queue.registry.task` and finds the latest slot, at or before the
current minute, that matches the task's cron expression.

- **Run rule and catch-up.** A task runs for that slot if it has not yet run for
  it. When the task has run before, the slot may be earlier than the current
  minute: that is the catch-up after downtime. Because only the *latest* matching
  slot is considered, at most one missed slot is ever caught up, however long the
  scheduler was down. A task that has never run starts from the current minute.
  "Has run" comes from ``scheduler_claims`` for ``on_one_server`` tasks (it
  survives restarts and is shared by replicas), and from memory for the others.
- **on_one_server.** The run inserts a ``(task, slot)`` row in
  ``scheduler_claims`` in the same transaction as the task's own writes. The
  primary key lets exactly one replica insert it. A losing replica's insert does
  nothing (PostgreSQL waits for the winner's commit first). If the task raises,
  its claim rolls back with its jobs, and the next tick tries again.
- **without_overlapping.** Before running, the task takes a lease row with an
  expiry in its own committed transaction and deletes it afterwards. While another
  holder's unexpired lease exists, the slot is skipped. The expiry
  (``lease_seconds``) frees a lease whose holder died.

Tasks get a session and should only enqueue jobs: heavy work belongs in a job,
where it has tries, a timeout and a failed-jobs record.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from cronsim import CronSim
from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.orm import Session

from bourse.db import Base, Database, unit_of_work, upsert
from bourse.logging import get_logger
from bourse.queue import metrics
from bourse.queue.heartbeat import ProcessHeartbeat
from bourse.queue.models import SchedulerClaim, SchedulerLease
from bourse.queue.registry import TaskSpec

log = get_logger("bourse.queue.scheduler")

MINUTE = 60


def minute_slot(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def latest_due_slot(task: TaskSpec, slot: datetime) -> datetime:
    """The latest minute at or before ``slot`` that matches the task's cron expression."""
    due: datetime = next(iter(CronSim(task.cron, slot + timedelta(seconds=1), reverse=True)))
    return due


def _epoch(slot: datetime) -> int:
    return int(slot.timestamp())


def insert_if_absent(session: Session, model: type[Base], **values: object) -> bool:
    """Insert a row unless its primary key exists; whether this call inserted it."""
    key = next(iter(inspect(model).primary_key))
    statement = upsert(session, model).values(**values).on_conflict_do_nothing().returning(key)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    return session.execute(statement).first() is not None


@dataclass(frozen=True)
class TaskOutcome:
    task: str
    slot: datetime
    status: str  # "ran", "claimed_elsewhere", "overlapping", "failed"


@dataclass
class Scheduler:
    db: Database
    tasks: dict[str, TaskSpec]
    owner: str = field(default_factory=lambda: f"scheduler-{uuid.uuid4().hex[:12]}")
    _last_run: dict[str, int] = field(default_factory=dict)
    _loaded: bool = False

    def _load_last_runs(self) -> None:
        with unit_of_work(self.db) as session:
            rows = session.execute(
                select(SchedulerClaim.task, func.max(SchedulerClaim.slot)).group_by(SchedulerClaim.task)
            ).all()
        for name, slot in rows:
            self._last_run[name] = max(self._last_run.get(name, 0), int(slot))
        self._loaded = True

    def tick(self, now: datetime | None = None) -> list[TaskOutcome]:
        """Run every task due at ``now``'s minute (or the one missed slot before it)."""
        current = minute_slot(now or datetime.now(UTC))
        if not self._loaded:
            self._load_last_runs()
        outcomes: list[TaskOutcome] = []
        for spec in self.tasks.values():
            due = latest_due_slot(spec, current)
            due_epoch = _epoch(due)
            last = self._last_run.get(spec.name)
            if last is None and due != current:
                continue  # never ran: no catch-up, start from the current minute
            if last is not None and due_epoch <= last:
                continue
            outcome = self._run(spec, due)
            if outcome.status != "failed":
                self._last_run[spec.name] = due_epoch
            outcomes.append(outcome)
        return outcomes

    def _run(self, spec: TaskSpec, slot: datetime) -> TaskOutcome:
        if spec.without_overlapping and not self._take_lease(spec):
            log.info("task_skipped_overlapping", task=spec.name, slot=slot.isoformat())
            return TaskOutcome(spec.name, slot, "overlapping")
        try:
            with unit_of_work(self.db) as session:
                if spec.on_one_server:
                    won = insert_if_absent(
                        session,
                        SchedulerClaim,
                        task=spec.name,
                        slot=_epoch(slot),
                        claimed_by=self.owner,
                        claimed_at=time.time(),
                    )
                    if not won:
                        log.debug("task_claimed_elsewhere", task=spec.name, slot=slot.isoformat())
                        return TaskOutcome(spec.name, slot, "claimed_elsewhere")
                spec.func(session)
        except Exception:
            log.exception("task_failed", task=spec.name, slot=slot.isoformat())
            return TaskOutcome(spec.name, slot, "failed")
        finally:
            if spec.without_overlapping:
                self._release_lease(spec)
        metrics.SCHEDULER_LAST_RUN.labels(spec.name).set(time.time())
        log.info("task_ran", task=spec.name, slot=slot.isoformat())
        return TaskOutcome(spec.name, slot, "ran")

    def _take_lease(self, spec: TaskSpec) -> bool:
        now = time.time()
        with unit_of_work(self.db) as session:
            taken = session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.task == spec.name, SchedulerLease.expires_at <= now)
                .values(owner=self.owner, expires_at=now + spec.lease_seconds)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return True
            return insert_if_absent(
                session, SchedulerLease, task=spec.name, owner=self.owner, expires_at=now + spec.lease_seconds
            )

    def _release_lease(self, spec: TaskSpec) -> None:
        with unit_of_work(self.db) as session:
            session.execute(
                delete(SchedulerLease).where(SchedulerLease.task == spec.name, SchedulerLease.owner == self.owner)
            )

    def prune_claims(self, keep_seconds: int = 7 * 86400) -> None:
        """Claims older than a week can never matter again (catch-up looks at the latest)."""
        cutoff = int(time.time()) - keep_seconds
        with unit_of_work(self.db) as session:
            for name, latest in session.execute(
                select(SchedulerClaim.task, func.max(SchedulerClaim.slot)).group_by(SchedulerClaim.task)
            ).all():
                session.execute(
                    delete(SchedulerClaim).where(
                        SchedulerClaim.task == name, SchedulerClaim.slot < min(cutoff, int(latest))
                    )
                )


def describe(tasks: Iterable[TaskSpec], now: datetime | None = None) -> list[dict[str, object]]:
    """For ``bourse schedule list``: each task, its flags and its next run."""
    start = minute_slot(now or datetime.now(UTC))
    return [
        {
            "task": spec.name,
            "cron": spec.cron,
            "on_one_server": spec.on_one_server,
            "without_overlapping": spec.without_overlapping,
            "next_run": next(iter(CronSim(spec.cron, start))).isoformat(),
        }
        for spec in sorted(tasks, key=lambda s: s.name)
    ]


class SchedulerProcess:
    """The long-running ``bourse scheduler``: one tick at every new minute until SIGTERM."""

    def __init__(self, scheduler: Scheduler, heartbeat: ProcessHeartbeat) -> None:
        self.scheduler = scheduler
        self.heartbeat = heartbeat
        self._stop = False

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        log.info("scheduler_stopping", signal=signal.Signals(sig).name)
        self._stop = True

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        log.info("scheduler_started", tasks=sorted(self.scheduler.tasks), owner=self.scheduler.owner)
        last_slot: datetime | None = None
        try:
            while not self._stop:
                self.heartbeat.beat()
                slot = minute_slot(datetime.now(UTC))
                if slot != last_slot:
                    try:
                        self.scheduler.tick(slot)
                        if slot.hour == 0 and slot.minute == 0:
                            self.scheduler.prune_claims()
                    except Exception:
                        log.exception("scheduler_tick_failed", slot=slot.isoformat())
                    last_slot = slot
                time.sleep(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.heartbeat.goodbye()
        log.info("scheduler_stopped")
        return 0
