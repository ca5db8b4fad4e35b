"""Commissions: accruals per trade, side and level, and the payouts that settle them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26

Rolling-deploy rule (docs/decisions/0003-expand-contract-migrations.md): new
tables only, which the code before this migration never reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "commission_payouts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ib_user_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("accruals", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("statement", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_commission_payouts_amount_positive")),
        sa.CheckConstraint("accruals > 0", name=op.f("ck_commission_payouts_accruals_positive")),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_commission_payouts_asset_assets")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["journal_entries.id"], name=op.f("fk_commission_payouts_entry_id_journal_entries")
        ),
        sa.ForeignKeyConstraint(["ib_user_id"], ["users.id"], name=op.f("fk_commission_payouts_ib_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commission_payouts")),
    )
    op.create_index("ix_commission_payouts_ib_user_id_created_at", "commission_payouts", ["ib_user_id", "created_at"])

    op.create_table(
        "commission_accruals",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("trade_id", _ID, nullable=False),
        sa.Column("side", sa.String(length=5), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("ib_user_id", sa.Uuid(), nullable=False),
        sa.Column("client_user_id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("instrument", sa.String(length=25), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("traded_at", _TS, nullable=False),
        sa.Column("payout_id", sa.Uuid(), nullable=True),
        sa.Column("clawed_back_at", _TS, nullable=True),
        sa.Column("clawback_entry_id", sa.Uuid(), nullable=True),
        sa.Column("clawback_reason", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("side IN ('maker', 'taker')", name=op.f("ck_commission_accruals_side")),
        sa.CheckConstraint("level >= 1", name=op.f("ck_commission_accruals_level_positive")),
        sa.CheckConstraint("amount > 0 AND amount <= fee", name=op.f("ck_commission_accruals_amount_within_fee")),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_commission_accruals_asset_assets")),
        sa.ForeignKeyConstraint(
            ["client_user_id"], ["users.id"], name=op.f("fk_commission_accruals_client_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["clawback_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_commission_accruals_clawback_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["journal_entries.id"], name=op.f("fk_commission_accruals_entry_id_journal_entries")
        ),
        sa.ForeignKeyConstraint(["ib_user_id"], ["users.id"], name=op.f("fk_commission_accruals_ib_user_id_users")),
        sa.ForeignKeyConstraint(
            ["instrument"], ["instruments.symbol"], name=op.f("fk_commission_accruals_instrument_instruments")
        ),
        sa.ForeignKeyConstraint(
            ["payout_id"], ["commission_payouts.id"], name=op.f("fk_commission_accruals_payout_id_commission_payouts")
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["commission_plans.id"], name=op.f("fk_commission_accruals_plan_id_commission_plans")
        ),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_commission_accruals_trade_id_trades")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commission_accruals")),
        sa.UniqueConstraint("trade_id", "side", "level", name=op.f("uq_commission_accruals_trade_id_side_level")),
    )
    op.create_index("ix_commission_accruals_ib_user_id_traded_at", "commission_accruals", ["ib_user_id", "traded_at"])
    op.create_index("ix_commission_accruals_payout_id", "commission_accruals", ["payout_id"])


def downgrade() -> None:
    op.drop_index("ix_commission_accruals_payout_id", table_name="commission_accruals")
    op.drop_index("ix_commission_accruals_ib_user_id_traded_at", table_name="commission_accruals")
    op.drop_table("commission_accruals")
    op.drop_index("ix_commission_payouts_ib_user_id_created_at", table_name="commission_payouts")
    op.drop_table("commission_payouts")
