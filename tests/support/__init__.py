"""Helpers the tests run as separate processes."""
