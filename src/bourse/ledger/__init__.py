"""The double-entry ledger: accounts, append-only journal entries, holds."""
