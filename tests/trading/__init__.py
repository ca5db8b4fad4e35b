"""Tests of the order book, its matching rules and its benchmark."""
