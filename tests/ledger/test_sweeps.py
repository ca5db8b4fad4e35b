"""Fee sweeps: an instrument's fee account is emptied into the asset's pool, once per state."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import delete, func, select

from bourse.db import Database, unit_of_work
from bourse.ledger.accounts import system_account
from bourse.ledger.models import Account, AccountKind, JournalEntry
from bourse.ledger.posting import Leg, post_entry
from bourse.queue.models import QueueJob
from bourse.queue.registry import JobContext, load_jobs, load_tasks
from tests.support.ledger import verify


def _collect(database: Database, symbol: str, amount: int) -> uuid.UUID:
    """As if fills had paid ``amount`` of fees into the instrument's account."""
    with unit_of_work(database) as session:
        house = system_account(session, AccountKind.house, "USD")
        account = system_account(session, AccountKind.fees, "USD", ref=symbol)
        post_entry(
            session,
            kind="adjustment",
            legs=[Leg(house, -amount), Leg(account, amount)],
            idempotency_key=f"test:{uuid.uuid4()}",
            actor="system:test",
        )
    return account


def _balance(database: Database, account_id: uuid.UUID) -> int:
    with unit_of_work(database) as session:
        return int(session.scalar(select(Account.balance).where(Account.id == account_id)) or 0)


def _pool(database: Database) -> int:
    with unit_of_work(database) as session:
        pool = system_account(session, AccountKind.fees, "USD")
    return _balance(database, pool)


def _queued_sweeps(database: Database, account_id: uuid.UUID) -> list[QueueJob]:
    with unit_of_work(database) as session:
        jobs = session.scalars(select(QueueJob).where(QueueJob.job == "ledger.sweep_fees")).all()
        mine = [job for job in jobs if json.loads(job.payload)["account_id"] == str(account_id)]
        session.expunge_all()
    return mine


def _schedule(database: Database) -> None:
    with unit_of_work(database) as session:
        load_tasks()["ledger.sweep_fees"].func(session)


def _run(database: Database, job: QueueJob) -> None:
    handler = load_jobs()[job.job].handler
    with unit_of_work(database) as session:
        handler(JobContext(session, json.loads(job.payload), job.uuid, 1, job.queue, None))


def _drop(database: Database, jobs: list[QueueJob]) -> None:
    with unit_of_work(database) as session:
        session.execute(delete(QueueJob).where(QueueJob.id.in_([job.id for job in jobs])))


def test_the_scheduler_queues_one_sweep_per_account_and_the_sweep_posts_once(database: Database) -> None:
    symbol = f"S{uuid.uuid4().hex[:6].upper()}-USD"
    account = _collect(database, symbol, 1_234)
    pool_before = _pool(database)
    assert load_tasks()["ledger.sweep_fees"].cron == "* * * * *"
    assert load_tasks()["ledger.sweep_fees"].on_one_server
    _schedule(database)
    _schedule(database)  # unique per account while one is queued
    [job] = _queued_sweeps(database, account)
    _run(database, job)
    _run(database, job)  # delivered twice: posts once (keyed by the account's seq)
    _drop(database, [job])
    assert _balance(database, account) == 0
    assert _pool(database) == pool_before + 1_234
    with unit_of_work(database) as session:
        sweeps = session.scalar(
            select(func.count())
            .select_from(JournalEntry)
            .where(JournalEntry.kind == "fee_sweep", JournalEntry.idempotency_key.like(f"fee_sweep:{account}:%"))
        )
    assert sweeps == 1
    # An empty account is not queued again; one that collected more is, and sweeps again.
    _schedule(database)
    assert _queued_sweeps(database, account) == []
    _collect(database, symbol, 66)
    _schedule(database)
    [again] = _queued_sweeps(database, account)
    _run(database, again)
    _drop(database, [again])
    assert _balance(database, account) == 0
    assert _pool(database) == pool_before + 1_300
    assert verify(database).ok


def test_a_sweep_of_an_account_that_is_not_an_instrument_fee_account_does_nothing(database: Database) -> None:
    with unit_of_work(database) as session:
        pool = system_account(session, AccountKind.fees, "USD")
        house = system_account(session, AccountKind.house, "USD")
    before = (_balance(database, pool), _balance(database, house))
    for account in (pool, house, uuid.uuid4()):
        job = QueueJob(
            job="ledger.sweep_fees", payload=json.dumps({"account_id": str(account)}), uuid="j", queue="default"
        )
        _run(database, job)
    assert (_balance(database, pool), _balance(database, house)) == before
