"""A worker for :func:`bourse.bench.harness.run_processes` in tests.

It lives in an importable module (not a test module) because the harness
spawns fresh interpreters, which import the worker by its module name.
"""

from __future__ import annotations

from bourse.bench.harness import Start, Tally

ERRORS_OF_SEED_1 = 5


def record_worker(label: str, seconds: float, seed: int, start: Start) -> None:
    """Report its own label and seed; seed 1 also reports a few errors."""
    tally = Tally()
    start.wait(seed, seconds)
    tally.latencies.append(float(seed))
    if seed == 1:
        for index in range(ERRORS_OF_SEED_1):
            tally.error(f"{label}: error {index}")
    start.report(tally)
