"""Orders for the matcher: pending and rejected, the accepted sequence, cancel requests,
and the client's Idempotency-Key on the order row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

The API now inserts an order ``pending`` with no ``sequence``; the instrument's matcher
sequences it (docs/decisions/0027-matcher-per-instrument-shard.md). Every existing row is
already sequenced and in one of the old statuses, so every new check holds for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_OLD_STATUS = "status IN ('open', 'partially_filled', 'filled', 'cancelled')"
_STATUS = "status IN ('pending', 'open', 'partially_filled', 'filled', 'cancelled', 'rejected')"
_SEQUENCED = "status IN ('pending', 'cancelled', 'rejected') OR sequence IS NOT NULL"
_REJECTED = "(status = 'rejected') = (reject_reason IS NOT NULL)"
_FINGERPRINT = "idempotency_key IS NULL OR request_fingerprint IS NOT NULL"
_PENDING = "status = 'pending' OR (cancel_requested_at IS NOT NULL AND status IN ('open', 'partially_filled'))"


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("reject_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("cancel_requested_at", _TS, nullable=True))
        batch_op.add_column(sa.Column("cancel_sequence", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
        batch_op.alter_column("sequence", existing_type=sa.BigInteger(), nullable=True)
        batch_op.drop_constraint(op.f("ck_orders_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_orders_status"), sa.text(_STATUS))
        batch_op.create_check_constraint(op.f("ck_orders_sequenced"), sa.text(_SEQUENCED))
        batch_op.create_check_constraint(op.f("ck_orders_rejected_has_reason"), sa.text(_REJECTED))
        batch_op.create_check_constraint(op.f("ck_orders_idempotency_key_has_fingerprint"), sa.text(_FINGERPRINT))
        batch_op.create_unique_constraint(op.f("uq_orders_user_id_idempotency_key"), ["user_id", "idempotency_key"])
        batch_op.create_unique_constraint(op.f("uq_orders_instrument_sequence"), ["instrument", "sequence"])
    op.create_index(
        "ix_orders_instrument_pending",
        "orders",
        ["instrument", "id"],
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_instrument_pending", table_name="orders")
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_constraint(op.f("uq_orders_instrument_sequence"), type_="unique")
        batch_op.drop_constraint(op.f("uq_orders_user_id_idempotency_key"), type_="unique")
        batch_op.drop_constraint(op.f("ck_orders_idempotency_key_has_fingerprint"), type_="check")
        batch_op.drop_constraint(op.f("ck_orders_rejected_has_reason"), type_="check")
        batch_op.drop_constraint(op.f("ck_orders_sequenced"), type_="check")
        batch_op.drop_constraint(op.f("ck_orders_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_orders_status"), sa.text(_OLD_STATUS))
        batch_op.alter_column("sequence", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column("request_fingerprint")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("cancel_sequence")
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("reject_reason")
