"""Payments: deposits, withdrawals and their approvals, the provider event inbox,
the payment audit trail, reconciliation reports, and the chargeback_receivable
account kind.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Rolling-deploy rule (docs/decisions/0003-expand-contract-migrations.md): this
migration must work with both the code before it and the code after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_USER_KINDS = "'available', 'held'"
_KINDS_BEFORE = "'available', 'held', 'psp_clearing', 'fees', 'commissions_payable', 'house'"
_KINDS_AFTER = f"{_KINDS_BEFORE}, 'chargeback_receivable'"


def _account_kinds(kinds: str) -> None:
    # Widening an IN list: the old rows satisfy the new constraint, and the old code
    # never writes the new kind, so both versions run against either schema.
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.drop_constraint(op.f("ck_accounts_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_accounts_kind"), sa.text(f"kind IN ({kinds})"))


def upgrade() -> None:
    _account_kinds(_KINDS_AFTER)
    op.create_table(
        "payment_audit",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("subject_type", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_audit")),
    )
    with op.batch_alter_table("payment_audit", schema=None) as batch_op:
        batch_op.create_index("ix_payment_audit_subject", ["subject_type", "subject_id"], unique=False)

    op.create_table(
        "psp_events",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("provider_type", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("psp_reference", sa.String(length=128), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=12), nullable=True),
        sa.Column("occurred_at", _TS, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("processed_at", _TS, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("note", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_psp_events")),
        sa.UniqueConstraint("connector", "event_id", name="uq_psp_events_connector_event_id"),
    )
    with op.batch_alter_table("psp_events", schema=None) as batch_op:
        batch_op.create_index("ix_psp_events_processed_at", ["processed_at"], unique=False)

    op.create_table(
        "reconciliation_reports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("connector", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("psp_transactions", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("missing_here", sa.JSON(), nullable=False),
        sa.Column("missing_at_psp", sa.JSON(), nullable=False),
        sa.Column("mismatches", sa.JSON(), nullable=False),
        sa.Column("mismatch_count", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_reports")),
    )
    with op.batch_alter_table("reconciliation_reports", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliation_reports_connector_day", ["connector", "day"], unique=False)

    op.create_table(
        "deposits",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("connector", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("psp_reference", sa.String(length=128), nullable=True),
        sa.Column("checkout_url", sa.String(length=1024), nullable=True),
        sa.Column("received_amount", sa.BigInteger(), nullable=True),
        sa.Column("received_currency", sa.String(length=12), nullable=True),
        sa.Column("reversed_amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False),
        sa.Column("failure_reason", sa.String(length=255), nullable=True),
        sa.Column("credit_entry_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("settled_at", _TS, nullable=True),
        sa.Column("credited_at", _TS, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'succeeded', 'failed', 'expired', 'needs_review', 'refunded', 'charged_back')",
            name=op.f("ck_deposits_state"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_deposits_amount_positive")),
        sa.CheckConstraint(
            "reversed_amount >= 0 AND reversed_amount <= amount", name=op.f("ck_deposits_reversed_within_amount")
        ),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= reversed_amount",
            name=op.f("ck_deposits_refunded_within_reversed"),
        ),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_deposits_asset_assets")),
        sa.ForeignKeyConstraint(
            ["credit_entry_id"], ["journal_entries.id"], name=op.f("fk_deposits_credit_entry_id_journal_entries")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_deposits_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposits")),
        sa.UniqueConstraint("connector", "psp_reference", name="uq_deposits_connector_psp_reference"),
    )
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.create_index("ix_deposits_state_created_at", ["state", "created_at"], unique=False)
        batch_op.create_index("ix_deposits_user_id_created_at", ["user_id", "created_at"], unique=False)

    op.create_table(
        "withdrawals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("connector", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("required_approvals", sa.SmallInteger(), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=False),
        sa.Column("psp_reference", sa.String(length=128), nullable=True),
        sa.Column("failure_reason", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("settled_at", _TS, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending_review', 'approved', 'processing', 'succeeded', 'failed', 'cancelled', 'rejected')",
            name=op.f("ck_withdrawals_state"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_withdrawals_amount_positive")),
        sa.CheckConstraint(
            "required_approvals >= 0 AND required_approvals <= 2", name=op.f("ck_withdrawals_required_approvals_range")
        ),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_withdrawals_asset_assets")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_withdrawals_hold_id_holds")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_withdrawals_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawals")),
        sa.UniqueConstraint("connector", "psp_reference", name="uq_withdrawals_connector_psp_reference"),
        sa.UniqueConstraint("hold_id", name=op.f("uq_withdrawals_hold_id")),
    )
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.create_index("ix_withdrawals_state_created_at", ["state", "created_at"], unique=False)
        batch_op.create_index("ix_withdrawals_user_id_created_at", ["user_id", "created_at"], unique=False)

    op.create_table(
        "withdrawal_approvals",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("withdrawal_id", sa.Uuid(), nullable=False),
        sa.Column("operator_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["operator_id"], ["users.id"], name=op.f("fk_withdrawal_approvals_operator_id_users")),
        sa.ForeignKeyConstraint(
            ["withdrawal_id"], ["withdrawals.id"], name=op.f("fk_withdrawal_approvals_withdrawal_id_withdrawals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawal_approvals")),
        sa.UniqueConstraint("withdrawal_id", "operator_id", name="uq_withdrawal_approvals_operator"),
    )


def downgrade() -> None:
    op.drop_table("withdrawal_approvals")
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.drop_index("ix_withdrawals_user_id_created_at")
        batch_op.drop_index("ix_withdrawals_state_created_at")

    op.drop_table("withdrawals")
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.drop_index("ix_deposits_user_id_created_at")
        batch_op.drop_index("ix_deposits_state_created_at")

    op.drop_table("deposits")
    with op.batch_alter_table("reconciliation_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_reports_connector_day")

    op.drop_table("reconciliation_reports")
    with op.batch_alter_table("psp_events", schema=None) as batch_op:
        batch_op.drop_index("ix_psp_events_processed_at")

    op.drop_table("psp_events")
    with op.batch_alter_table("payment_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_audit_subject")

    op.drop_table("payment_audit")
    _account_kinds(_KINDS_BEFORE)
