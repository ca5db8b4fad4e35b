"""Baseline: the schema before any domain tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Later revisions add the domain tables. Having a baseline means a fresh database is
"at head" from its first migration, which is what /readyz checks.
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to create yet: the version table itself is the baseline."""


def downgrade() -> None:
    """Nothing to drop."""
