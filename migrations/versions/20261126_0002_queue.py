"""Queue: jobs, failed jobs, outbox, scheduler claims and worker heartbeats.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``queue_jobs`` holds pending and reserved jobs (and is the Redis driver's
transactional outbox); ``queue_failed_jobs`` the jobs that ran out of tries;
``queue_processes`` worker and scheduler heartbeats; ``scheduler_claims`` and
``scheduler_leases`` make scheduler replicas agree. All new tables: nothing to
expand or contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "queue_jobs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("reserved_at", sa.Float(), nullable=True),
        sa.Column("reserved_by", sa.String(length=64), nullable=True),
        sa.Column("unique_key", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_jobs")),
        sa.UniqueConstraint("unique_key", name=op.f("uq_queue_jobs_unique_key")),
        sa.UniqueConstraint("uuid", name=op.f("uq_queue_jobs_uuid")),
    )
    op.create_index("ix_queue_jobs_queue_available", "queue_jobs", ["queue", "available_at", "id"], unique=False)
    op.create_table(
        "queue_failed_jobs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("exception", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("failed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_failed_jobs")),
        sa.UniqueConstraint("uuid", name=op.f("uq_queue_failed_jobs_uuid")),
    )
    op.create_index(op.f("ix_queue_failed_jobs_failed_at"), "queue_failed_jobs", ["failed_at"], unique=False)
    op.create_table(
        "queue_processes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(length=255), nullable=False),
        sa.Column("busy", sa.Boolean(), nullable=False),
        sa.Column("current_job", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_processes")),
    )
    op.create_index(op.f("ix_queue_processes_heartbeat_at"), "queue_processes", ["heartbeat_at"], unique=False)
    op.create_table(
        "scheduler_claims",
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("task", "slot", name=op.f("pk_scheduler_claims")),
    )
    op.create_table(
        "scheduler_leases",
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("task", name=op.f("pk_scheduler_leases")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_leases")
    op.drop_table("scheduler_claims")
    op.drop_index(op.f("ix_queue_processes_heartbeat_at"), table_name="queue_processes")
    op.drop_table("queue_processes")
    op.drop_index(op.f("ix_queue_failed_jobs_failed_at"), table_name="queue_failed_jobs")
    op.drop_table("queue_failed_jobs")
    op.drop_index("ix_queue_jobs_queue_available", table_name="queue_jobs")
    op.drop_table("queue_jobs")
