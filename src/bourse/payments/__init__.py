"""Money in and out: deposits and withdrawals through payment providers, and reconciliation."""
