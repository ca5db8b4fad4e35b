"""Busts: who busted a trade, when, why, and the entry that reversed it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26

Rolling-deploy rule (docs/decisions/0003-expand-contract-migrations.md): nullable
columns only, which the code before this migration neither reads nor writes; the
check holds for every existing row (all four are NULL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_BUST_COMPLETE = (
    "(busted_at IS NULL) = (busted_by IS NULL)"
    " AND (busted_at IS NULL) = (bust_reason IS NULL)"
    " AND (busted_at IS NULL) = (bust_entry_id IS NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("trades") as batch_op:
        batch_op.add_column(sa.Column("busted_at", _TS, nullable=True))
        batch_op.add_column(sa.Column("busted_by", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("bust_reason", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("bust_entry_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_trades_busted_by_users"), "users", ["busted_by"], ["id"])
        batch_op.create_foreign_key(
            op.f("fk_trades_bust_entry_id_journal_entries"), "journal_entries", ["bust_entry_id"], ["id"]
        )
        batch_op.create_check_constraint(op.f("ck_trades_bust_complete"), sa.text(_BUST_COMPLETE))


def downgrade() -> None:
    with op.batch_alter_table("trades") as batch_op:
        batch_op.drop_constraint(op.f("ck_trades_bust_complete"), type_="check")
        batch_op.drop_constraint(op.f("fk_trades_bust_entry_id_journal_entries"), type_="foreignkey")
        batch_op.drop_constraint(op.f("fk_trades_busted_by_users"), type_="foreignkey")
        batch_op.drop_column("bust_entry_id")
        batch_op.drop_column("bust_reason")
        batch_op.drop_column("busted_by")
        batch_op.drop_column("busted_at")
