"""The benchmarks behind ``bourse bench``, one module each, on one shared harness.

A composition-level consumer: the benchmarks import the domains (and start the
app as a user would); no domain imports them. :mod:`bourse.bench.commands`
assembles the ``bourse bench`` group, :mod:`bourse.bench.harness` is what they
share, and docs/benchmarks.md holds the figures.
"""
