"""Delivery: the compose stack helpers and the end-to-end run (see compose.yaml)."""
