"""Tests of the benchmarks (``bourse bench``) and their shared harness.

They check that each benchmark runs and measures something real; the figures
are recorded in docs/benchmarks.md, never asserted here.
"""
