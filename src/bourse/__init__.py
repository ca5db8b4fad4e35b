"""Bourse: a trading platform for brokerages."""

__version__ = "0.1.0"
