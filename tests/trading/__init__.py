"""Tests of the order book and its matching rules (its benchmark: tests/bench/)."""
