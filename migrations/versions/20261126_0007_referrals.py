"""Referrals: referral codes, referral links and commission plans of introducing brokers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

Rolling-deploy rule (docs/decisions/0003-expand-contract-migrations.md): new
tables only, which the code before this migration never reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "referral_codes",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("ib_user_id", sa.Uuid(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("length(code) >= 6 AND length(code) <= 32", name=op.f("ck_referral_codes_code_length")),
        sa.ForeignKeyConstraint(["ib_user_id"], ["users.id"], name=op.f("fk_referral_codes_ib_user_id_users")),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_referral_codes")),
    )
    op.create_index(op.f("ix_referral_codes_ib_user_id"), "referral_codes", ["ib_user_id"])

    op.create_table(
        "referrals",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("ib_user_id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("user_id <> ib_user_id", name=op.f("ck_referrals_not_self")),
        sa.ForeignKeyConstraint(["code"], ["referral_codes.code"], name=op.f("fk_referrals_code_referral_codes")),
        sa.ForeignKeyConstraint(["ib_user_id"], ["users.id"], name=op.f("fk_referrals_ib_user_id_users")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_referrals_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_referrals")),
    )
    op.create_index("ix_referrals_ib_user_id_created_at", "referrals", ["ib_user_id", "created_at"])

    op.create_table(
        "commission_plans",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ib_user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("valid_from", _TS, nullable=False),
        sa.Column("valid_to", _TS, nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("kind IN ('percent_of_fee', 'per_lot')", name=op.f("ck_commission_plans_kind")),
        sa.CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name=op.f("ck_commission_plans_valid_period")),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_commission_plans_created_by_users")),
        sa.ForeignKeyConstraint(["ib_user_id"], ["users.id"], name=op.f("fk_commission_plans_ib_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commission_plans")),
    )
    op.create_index("ix_commission_plans_ib_user_id_valid_from", "commission_plans", ["ib_user_id", "valid_from"])
    # One current plan per IB: the row without an end.
    op.create_index(
        "ix_commission_plans_one_current",
        "commission_plans",
        ["ib_user_id"],
        unique=True,
        postgresql_where=sa.text("valid_to IS NULL"),
        sqlite_where=sa.text("valid_to IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_commission_plans_one_current", table_name="commission_plans")
    op.drop_index("ix_commission_plans_ib_user_id_valid_from", table_name="commission_plans")
    op.drop_table("commission_plans")
    op.drop_index("ix_referrals_ib_user_id_created_at", table_name="referrals")
    op.drop_table("referrals")
    op.drop_index(op.f("ix_referral_codes_ib_user_id"), table_name="referral_codes")
    op.drop_table("referral_codes")
