"""Trading instruments.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

The instruments table, with CHECK constraints for every rule of an
instrument, and three markets seeded for the embedded default (BTC-USD,
ETH-USD, EUR-USD; all open, no last price yet). A new table only: code
before this revision never reads it, so rolling deploys are safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)

# The symbol's shape, ^[A-Z0-9]{2,12}-[A-Z0-9]{2,12}$: SQLite has no regular
# expressions, so it is spelled with GLOB and string arithmetic there.
_SYMBOL_CHECK = {
    "postgresql": "symbol ~ '^[A-Z0-9]{2,12}-[A-Z0-9]{2,12}$'",
    "sqlite": (
        "symbol NOT GLOB '*[^A-Z0-9-]*'"
        " AND length(symbol) - length(replace(symbol, '-', '')) = 1"
        " AND instr(symbol, '-') BETWEEN 3 AND 13"
        " AND length(symbol) - instr(symbol, '-') BETWEEN 2 AND 12"
    ),
}

# Prices at price_scale (quote per whole base); lot and limits in base minor units
# (BTC and ETH have 8 decimals, EUR 2).
SEED_INSTRUMENTS = [
    {
        "symbol": "BTC-USD",
        "base_asset": "BTC",
        "quote_asset": "USD",
        "price_scale": 2,
        "tick_size": 1,  # 0.01 USD
        "lot_size": 10_000,  # 0.0001 BTC
        "min_quantity": 10_000,  # 0.0001 BTC
        "max_quantity": 100 * 10**8,  # 100 BTC
        "price_band_bps": 1_000,
    },
    {
        "symbol": "ETH-USD",
        "base_asset": "ETH",
        "quote_asset": "USD",
        "price_scale": 2,
        "tick_size": 1,  # 0.01 USD
        "lot_size": 100_000,  # 0.001 ETH
        "min_quantity": 100_000,  # 0.001 ETH
        "max_quantity": 1_000 * 10**8,  # 1000 ETH
        "price_band_bps": 1_000,
    },
    {
        "symbol": "EUR-USD",
        "base_asset": "EUR",
        "quote_asset": "USD",
        "price_scale": 5,
        "tick_size": 1,  # 0.00001 USD
        "lot_size": 100,  # 1.00 EUR
        "min_quantity": 100,  # 1 EUR
        "max_quantity": 1_000_000 * 100,  # 1,000,000 EUR
        "price_band_bps": 500,
    },
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    checks = [
        sa.CheckConstraint(
            "symbol = base_asset || '-' || quote_asset", name=op.f("ck_instruments_symbol_names_assets")
        ),
        sa.CheckConstraint("base_asset <> quote_asset", name=op.f("ck_instruments_assets_differ")),
        sa.CheckConstraint("price_scale >= 0 AND price_scale <= 8", name=op.f("ck_instruments_price_scale_range")),
        sa.CheckConstraint("tick_size > 0", name=op.f("ck_instruments_tick_size_positive")),
        sa.CheckConstraint("lot_size > 0", name=op.f("ck_instruments_lot_size_positive")),
        sa.CheckConstraint(
            "min_quantity > 0 AND min_quantity % lot_size = 0", name=op.f("ck_instruments_min_quantity_on_lot")
        ),
        sa.CheckConstraint("max_quantity % lot_size = 0", name=op.f("ck_instruments_max_quantity_on_lot")),
        sa.CheckConstraint("min_quantity <= max_quantity", name=op.f("ck_instruments_min_not_above_max")),
        sa.CheckConstraint(
            "price_band_bps >= 1 AND price_band_bps <= 10000", name=op.f("ck_instruments_price_band_range")
        ),
        sa.CheckConstraint("status IN ('open', 'halted')", name=op.f("ck_instruments_status")),
        sa.CheckConstraint("last_price IS NULL OR last_price > 0", name=op.f("ck_instruments_last_price_positive")),
        sa.CheckConstraint("sequence >= 0", name=op.f("ck_instruments_sequence_not_negative")),
    ]
    if dialect in _SYMBOL_CHECK:
        checks.append(sa.CheckConstraint(_SYMBOL_CHECK[dialect], name=op.f("ck_instruments_symbol_format")))
    instruments = op.create_table(
        "instruments",
        sa.Column("symbol", sa.String(length=25), nullable=False),
        sa.Column("base_asset", sa.String(length=12), nullable=False),
        sa.Column("quote_asset", sa.String(length=12), nullable=False),
        sa.Column("price_scale", sa.SmallInteger(), nullable=False),
        sa.Column("tick_size", sa.BigInteger(), nullable=False),
        sa.Column("lot_size", sa.BigInteger(), nullable=False),
        sa.Column("min_quantity", sa.BigInteger(), nullable=False),
        sa.Column("max_quantity", sa.BigInteger(), nullable=False),
        sa.Column("price_band_bps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("last_price", sa.BigInteger(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        *checks,
        sa.ForeignKeyConstraint(["base_asset"], ["assets.code"], name=op.f("fk_instruments_base_asset_assets")),
        sa.ForeignKeyConstraint(["quote_asset"], ["assets.code"], name=op.f("fk_instruments_quote_asset_assets")),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_instruments")),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        instruments,
        [
            {**seed, "status": "open", "last_price": None, "sequence": 0, "created_at": now, "updated_at": now}
            for seed in SEED_INSTRUMENTS
        ],
    )


def downgrade() -> None:
    op.drop_table("instruments")
