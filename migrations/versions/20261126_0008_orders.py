"""Orders and trades.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

The order service (docs/decisions/0011-matching-single-writer.md): every order as
placed and as it stands, and every fill with the journal entry that settled it.
New tables only, which the code before this migration never reads, so rolling
deploys are safe (docs/decisions/0003-expand-contract-migrations.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SIDES = "'buy', 'sell'"


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("instrument", sa.String(length=25), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=True),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("tif", sa.String(length=3), nullable=False),
        sa.Column("stp", sa.String(length=16), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("filled_quantity", sa.BigInteger(), nullable=False),
        sa.Column("quote_budget", sa.BigInteger(), nullable=True),
        sa.Column("quote_spent", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("cancel_reason", sa.String(length=32), nullable=True),
        sa.Column("maker_bps", sa.Integer(), nullable=False),
        sa.Column("taker_bps", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint(f"side IN ({_SIDES})", name=op.f("ck_orders_side")),
        sa.CheckConstraint("kind IN ('limit', 'market')", name=op.f("ck_orders_kind")),
        sa.CheckConstraint("tif IN ('gtc', 'ioc', 'fok')", name=op.f("ck_orders_tif")),
        sa.CheckConstraint(
            "status IN ('open', 'partially_filled', 'filled', 'cancelled')", name=op.f("ck_orders_status")
        ),
        sa.CheckConstraint("(kind = 'limit') = (price IS NOT NULL)", name=op.f("ck_orders_price_iff_limit")),
        sa.CheckConstraint("price IS NULL OR price > 0", name=op.f("ck_orders_price_positive")),
        sa.CheckConstraint("kind = 'limit' OR tif <> 'gtc'", name=op.f("ck_orders_market_not_gtc")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_orders_quantity_positive")),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name=op.f("ck_orders_filled_within_quantity")
        ),
        sa.CheckConstraint(
            "quote_budget IS NULL OR (kind = 'market' AND side = 'buy')", name=op.f("ck_orders_budget_on_market_buy")
        ),
        sa.CheckConstraint("quote_budget IS NULL OR quote_budget > 0", name=op.f("ck_orders_budget_positive")),
        sa.CheckConstraint("quote_spent >= 0", name=op.f("ck_orders_quote_spent_not_negative")),
        sa.CheckConstraint("maker_bps >= 0 AND taker_bps >= 0", name=op.f("ck_orders_fees_not_negative")),
        sa.CheckConstraint("status <> 'filled' OR filled_quantity = quantity", name=op.f("ck_orders_filled_means_all")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_orders_hold_id_holds")),
        sa.ForeignKeyConstraint(["instrument"], ["instruments.symbol"], name=op.f("fk_orders_instrument_instruments")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("user_id", "client_order_id", name=op.f("uq_orders_user_id_client_order_id")),
    )
    # "My open orders" and "the resting orders of an instrument, in id order" (the book's rebuild).
    op.create_index("ix_orders_user_id_status", "orders", ["user_id", "status"])
    op.create_index("ix_orders_instrument_status_id", "orders", ["instrument", "status", "id"])

    op.create_table(
        "trades",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("instrument", sa.String(length=25), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("maker_order_id", _ID, nullable=False),
        sa.Column("taker_order_id", _ID, nullable=False),
        sa.Column("maker_user_id", sa.Uuid(), nullable=False),
        sa.Column("taker_user_id", sa.Uuid(), nullable=False),
        sa.Column("taker_side", sa.String(length=4), nullable=False),
        sa.Column("quote_amount", sa.BigInteger(), nullable=False),
        sa.Column("maker_fee", sa.BigInteger(), nullable=False),
        sa.Column("taker_fee", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("price > 0 AND quantity > 0", name=op.f("ck_trades_price_quantity_positive")),
        sa.CheckConstraint(
            "quote_amount >= 0 AND maker_fee >= 0 AND taker_fee >= 0", name=op.f("ck_trades_amounts_not_negative")
        ),
        sa.CheckConstraint(f"taker_side IN ({_SIDES})", name=op.f("ck_trades_taker_side")),
        sa.CheckConstraint("maker_order_id <> taker_order_id", name=op.f("ck_trades_two_orders")),
        sa.ForeignKeyConstraint(["entry_id"], ["journal_entries.id"], name=op.f("fk_trades_entry_id_journal_entries")),
        sa.ForeignKeyConstraint(["instrument"], ["instruments.symbol"], name=op.f("fk_trades_instrument_instruments")),
        sa.ForeignKeyConstraint(["maker_order_id"], ["orders.id"], name=op.f("fk_trades_maker_order_id_orders")),
        sa.ForeignKeyConstraint(["maker_user_id"], ["users.id"], name=op.f("fk_trades_maker_user_id_users")),
        sa.ForeignKeyConstraint(["taker_order_id"], ["orders.id"], name=op.f("fk_trades_taker_order_id_orders")),
        sa.ForeignKeyConstraint(["taker_user_id"], ["users.id"], name=op.f("fk_trades_taker_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
        sa.UniqueConstraint("instrument", "sequence", name=op.f("uq_trades_instrument_sequence")),
    )
    # "My trades", newest first, whichever side I was on.
    op.create_index("ix_trades_maker_user_id_id", "trades", ["maker_user_id", "id"])
    op.create_index("ix_trades_taker_user_id_id", "trades", ["taker_user_id", "id"])


def downgrade() -> None:
    op.drop_table("trades")
    op.drop_table("orders")
