"""Idempotency keys for money-moving API calls."""
