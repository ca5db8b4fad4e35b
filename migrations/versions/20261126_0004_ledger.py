"""Ledger: assets, accounts, journal entries, postings, holds and idempotency keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

The journal (entries and postings) is append-only: triggers refuse UPDATE,
DELETE and (on PostgreSQL) TRUNCATE, on both backends. Corrections are new
reversal entries. Four assets are seeded for the embedded default.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_GENESIS = "0" * 64
_ACCOUNT_KINDS = "'available', 'held', 'psp_clearing', 'fees', 'commissions_payable', 'house'"
_USER_KINDS = "'available', 'held'"
_JOURNAL = ("journal_entries", "postings")

SEED_ASSETS = [
    {"code": "USD", "scale": 2, "name": "US dollar"},
    {"code": "EUR", "scale": 2, "name": "Euro"},
    {"code": "BTC", "scale": 8, "name": "Bitcoin"},
    {"code": "ETH", "scale": 8, "name": "Ether"},
]


def upgrade() -> None:
    assets = op.create_table(
        "assets",
        sa.Column("code", sa.String(length=12), nullable=False),
        sa.Column("scale", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("scale >= 0 AND scale <= 8", name=op.f("ck_assets_scale_range")),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_assets")),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint(f"kind IN ({_ACCOUNT_KINDS})", name=op.f("ck_accounts_kind")),
        sa.CheckConstraint(
            f"(kind IN ({_USER_KINDS})) = (user_id IS NOT NULL)", name=op.f("ck_accounts_user_kinds_have_a_user")
        ),
        sa.CheckConstraint(
            f"kind NOT IN ({_USER_KINDS}) OR balance >= 0", name=op.f("ck_accounts_user_balance_not_negative")
        ),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_accounts_seq_not_negative")),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_accounts_asset_assets")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_accounts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("kind", "ref", "asset", name="uq_accounts_kind_ref_asset"),
    )
    op.create_index("ix_accounts_user_id", "accounts", ["user_id"])
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("reverses_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["reverses_id"], ["journal_entries.id"], name=op.f("fk_journal_entries_reverses_id_journal_entries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_journal_entries_idempotency_key")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_journal_entries_reverses_id")),
    )
    op.create_table(
        "postings",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_postings_amount_not_zero")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_postings_account_id_accounts")),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_postings_asset_assets")),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["journal_entries.id"], name=op.f("fk_postings_entry_id_journal_entries")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
        sa.UniqueConstraint("account_id", "seq", name="uq_postings_account_id_seq"),
    )
    op.create_index("ix_postings_entry_id", "postings", ["entry_id"])
    op.create_table(
        "holds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("asset", sa.String(length=12), nullable=False),
        sa.Column("available_account_id", sa.Uuid(), nullable=False),
        sa.Column("held_account_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("state IN ('open', 'captured', 'released')", name=op.f("ck_holds_state")),
        sa.CheckConstraint(
            "amount > 0 AND captured >= 0 AND released >= 0", name=op.f("ck_holds_amounts_not_negative")
        ),
        sa.CheckConstraint("captured + released <= amount", name=op.f("ck_holds_not_over_settled")),
        sa.ForeignKeyConstraint(["asset"], ["assets.code"], name=op.f("fk_holds_asset_assets")),
        sa.ForeignKeyConstraint(
            ["available_account_id"], ["accounts.id"], name=op.f("fk_holds_available_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(["held_account_id"], ["accounts.id"], name=op.f("fk_holds_held_account_id_accounts")),
        sa.ForeignKeyConstraint(["entry_id"], ["journal_entries.id"], name=op.f("fk_holds_entry_id_journal_entries")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_holds_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("entry_id", name=op.f("uq_holds_entry_id")),
    )
    op.create_index("ix_holds_user_id", "holds", ["user_id"])
    op.create_index("ix_holds_held_account_id_state", "holds", ["held_account_id", "state"])
    op.create_table(
        "idempotency_keys",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.SmallInteger(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_idempotency_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_id_key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    _create_append_only_triggers()
    op.bulk_insert(
        assets,
        [{**asset, "active": True, "created_at": datetime.now(UTC)} for asset in SEED_ASSETS],
    )


def _create_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION bourse_journal_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'bourse: % on % refused: the journal is append-only; post a reversal entry',
                    TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        for table in _JOURNAL:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION bourse_journal_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION bourse_journal_append_only()"
            )
    else:
        for table in _JOURNAL:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'bourse: {action} on {table} refused: the journal is append-only'); END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _JOURNAL:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS bourse_journal_append_only()")
    else:
        for table in _JOURNAL:
            for action in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_holds_held_account_id_state", table_name="holds")
    op.drop_index("ix_holds_user_id", table_name="holds")
    op.drop_table("holds")
    op.drop_index("ix_postings_entry_id", table_name="postings")
    op.drop_table("postings")
    op.drop_table("journal_entries")
    op.drop_index("ix_accounts_user_id", table_name="accounts")
    op.drop_table("accounts")
    op.drop_table("assets")
