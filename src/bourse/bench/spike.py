"""The rate schedule of ``bourse bench orders-http --spike`` and the timeline of what came back.

A spike ``BASE:PEAK:RAMP:HOLD`` (issue 15's is ``50:500:30:60``) is an arrival rate in
requests per second over time, in four phases:

- ``lead-in``: BASE for ``lead_in`` seconds (10 by default), the load before the spike;
- ``ramp``: rising linearly from BASE to PEAK over RAMP seconds (0: a step);
- ``peak``: PEAK for HOLD seconds;
- ``tail``: BASE again for ``tail`` seconds (10 by default), to show the recovery.

Arrival ``k`` (k = 0, 1, 2, ...) is due at the instant the expected number of arrivals
since the start, the integral of the rate, reaches ``k``; so any interval holds as many
arrivals as the integral of the rate over it, within one. Client process ``i`` of ``C``
takes arrivals ``i, i + C, i + 2C, ...`` (:class:`Arrivals`), and within a process
whichever of its connections is free takes the next one: the clients share one
time-varying arrival rate.

What came back is a list of :data:`Event` (when each request was due, sent and answered,
and its HTTP status). :func:`timeline` groups them into windows by the time of the answer:
the rate answered, p50 and p99 latency counted from when each request was *due* (so a
backlog, on the server or in the clients, is charged to the requests that waited in it)
and from when it was sent (``service``: the server's share, without the clients' queue),
the ``202`` answers (accepted, not matched within the server's wait), the refusals and the
errors. This module is arithmetic only: the requests are sent by ``orders_http``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bourse.bench.harness import latency_ms

# The rates --spike accepts, as --rate does.
MIN_RATE = 1.0
MAX_RATE = 100_000.0
MAX_SECONDS = 3600.0
SPIKE_FORMAT = "BASE:PEAK:RAMP:HOLD (requests/s, requests/s, seconds, seconds), e.g. 50:500:30:60"

# One request: (due, sent, answered) in seconds since the start, and the HTTP status (0: no answer).
Event = tuple[float, float, float, int]


@dataclass(frozen=True)
class Phase:
    """A stretch of the schedule whose rate moves linearly from ``rate_from`` to ``rate_to``."""

    name: str
    start: float
    seconds: float
    rate_from: float
    rate_to: float
    arrivals_before: float  # the expected arrivals before ``start``

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def arrivals_after(self) -> float:
        return self.arrivals(self.end)

    def rate(self, t: float) -> float:
        return self.rate_from + (self.rate_to - self.rate_from) * (t - self.start) / self.seconds

    def arrivals(self, t: float) -> float:
        """The expected arrivals before ``t`` (within this phase): the integral of the rate."""
        s = t - self.start
        return self.arrivals_before + self.rate_from * s + (self.rate_to - self.rate_from) * s * s / (2 * self.seconds)

    def due(self, k: float) -> float:
        """When the expected arrivals reach ``k`` (within this phase): ``arrivals`` inverted."""
        delta = k - self.arrivals_before
        slope = (self.rate_to - self.rate_from) / self.seconds
        # rate_from * s + slope * s**2 / 2 = delta, solved in the form that stays exact when
        # the slope is 0 (a flat phase) and loses no digits when it is small.
        return self.start + 2 * delta / (self.rate_from + math.sqrt(self.rate_from**2 + 2 * slope * delta))


@dataclass(frozen=True)
class SpikeSchedule:
    """A spike from ``base`` to ``peak`` requests per second (see the module's docstring)."""

    base: float
    peak: float
    ramp: float
    hold: float
    lead_in: float = 10.0
    tail: float = 10.0

    @classmethod
    def parse(cls, text: str) -> SpikeSchedule:
        """``BASE:PEAK:RAMP:HOLD``; ValueError with the reason if it is not a valid spike."""
        parts = text.split(":")
        if len(parts) != 4:  # noqa: PLR2004 - the four fields of the format
            raise ValueError(f"expected {SPIKE_FORMAT}, got {text!r}")
        try:
            base, peak, ramp, hold = (float(part) for part in parts)
        except ValueError:
            raise ValueError(f"expected four numbers, {SPIKE_FORMAT}; got {text!r}") from None
        if not all(math.isfinite(value) for value in (base, peak, ramp, hold)):
            raise ValueError(f"every field must be a finite number, got {text!r}")
        if not MIN_RATE <= base <= MAX_RATE:
            raise ValueError(f"BASE must be {MIN_RATE:g} to {MAX_RATE:g} requests/s, got {base:g}")
        if not base <= peak <= MAX_RATE:
            raise ValueError(f"PEAK must be at least BASE ({base:g}) and at most {MAX_RATE:g} requests/s, got {peak:g}")
        if ramp < 0:
            raise ValueError(f"RAMP must be 0 seconds (a step) or more, got {ramp:g}")
        if hold <= 0:
            raise ValueError(f"HOLD must be more than 0 seconds, got {hold:g}")
        return cls(base, peak, ramp, hold)

    def check(self) -> None:
        """ValueError unless the whole run, lead-in and tail included, fits the limit."""
        if self.seconds > MAX_SECONDS:
            raise ValueError(f"the run would last {self.seconds:g} s, more than {MAX_SECONDS:g} s")

    @cached_property
    def phases(self) -> tuple[Phase, ...]:
        """The phases that last more than 0 seconds, in order."""
        shape = (
            ("lead-in", self.lead_in, self.base, self.base),
            ("ramp", self.ramp, self.base, self.peak),
            ("peak", self.hold, self.peak, self.peak),
            ("tail", self.tail, self.base, self.base),
        )
        phases: list[Phase] = []
        start = arrivals = 0.0
        for name, seconds, rate_from, rate_to in shape:
            if seconds > 0:
                phase = Phase(name, start, seconds, rate_from, rate_to, arrivals)
                phases.append(phase)
                start, arrivals = phase.end, phase.arrivals_after
        return tuple(phases)

    @property
    def seconds(self) -> float:
        return self.lead_in + self.ramp + self.hold + self.tail

    @property
    def total(self) -> float:
        """The expected arrivals over the whole run."""
        return self.phases[-1].arrivals_after

    @property
    def count(self) -> int:
        """How many requests are due before the end (arrivals 0 .. count - 1)."""
        return math.ceil(self.total)

    def _phase(self, t: float) -> Phase:
        return next((phase for phase in self.phases if t < phase.end), self.phases[-1])

    def rate(self, t: float) -> float:
        """The arrival rate at ``t`` seconds since the start (0 outside the run)."""
        if t < 0 or t >= self.seconds:
            return 0.0
        return self._phase(t).rate(t)

    def arrivals(self, t: float) -> float:
        """The expected arrivals before ``t`` seconds since the start."""
        if t <= 0:
            return 0.0
        if t >= self.seconds:
            return self.total
        return self._phase(t).arrivals(t)

    def due(self, k: int) -> float:
        """When arrival ``k`` is due, in seconds since the start; infinity if after the end."""
        if k < 0:
            raise ValueError("arrivals are numbered from 0")
        if k >= self.total:
            return math.inf
        phase = next((phase for phase in self.phases if k < phase.arrivals_after), self.phases[-1])
        return min(phase.due(k), phase.end)

    def describe(self) -> dict[str, float]:
        return {
            "base": self.base,
            "peak": self.peak,
            "ramp_s": self.ramp,
            "hold_s": self.hold,
            "lead_in_s": self.lead_in,
            "tail_s": self.tail,
            "seconds": self.seconds,
        }


@dataclass
class Arrivals:
    """Client process ``client`` of ``clients``: its arrivals, taken in turn by its threads."""

    schedule: SpikeSchedule
    client: int
    clients: int
    _next: int = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._next = self.client

    def take(self) -> float | None:
        """When this client's next arrival is due (seconds since the start); None after the end."""
        with self._lock:
            k = self._next
            self._next += self.clients
        due = self.schedule.due(k)
        return None if due >= self.schedule.seconds else due


# -- What came back ------------------------------------------------------------------------


def is_error(status: int) -> bool:
    """No answer (0) or a server error: what must not happen."""
    return status == 0 or status >= 500  # noqa: PLR2004 - the 5xx class


def figures(events: Sequence[Event], seconds: float) -> dict[str, Any]:
    """The rate answered over ``seconds``, latencies from due (and from sent: ``service``), 202s,
    refusals and errors of ``events``."""
    latencies = [answered - due for due, _, answered, status in events if not is_error(status)]
    # From when each request was sent: the server's share, without the clients' own queue.
    service = [answered - sent for _, sent, answered, status in events if not is_error(status)]
    errors = [status for *_, status in events if is_error(status)]
    return {
        "rate": round(len(latencies) / seconds, 1) if seconds > 0 else None,
        "answered": len(latencies),
        "p50_ms": latency_ms(latencies, 0.50, 1) if latencies else None,
        "p99_ms": latency_ms(latencies, 0.99, 1) if latencies else None,
        "service_p50_ms": latency_ms(service, 0.50, 1) if service else None,
        "service_p99_ms": latency_ms(service, 0.99, 1) if service else None,
        "pending": sum(1 for *_, status in events if status == 202),  # noqa: PLR2004 - accepted, not matched yet
        "refused": sum(1 for *_, status in events if 400 <= status < 500),  # noqa: PLR2004 - the 4xx class
        "errors": len(errors),
        "errors_5xx": sum(1 for status in errors if status >= 500),  # noqa: PLR2004 - the 5xx class
    }


def timeline(events: Sequence[Event], schedule: SpikeSchedule, window: float) -> list[dict[str, Any]]:
    """One row per ``window`` seconds, from the start to the last answer, by time of answer.

    ``target`` is the schedule's mean rate over the window; the rest is :func:`figures`
    of the requests answered (or failed) in it.
    """
    last = max((answered for _, _, answered, _ in events), default=0.0)
    count = max(math.ceil(schedule.seconds / window - 1e-9), math.floor(last / window) + 1)
    buckets: list[list[Event]] = [[] for _ in range(count)]
    for event in events:
        buckets[max(0, int(event[2] // window))].append(event)
    rows = []
    for i, bucket in enumerate(buckets):
        start = i * window
        target = (schedule.arrivals(start + window) - schedule.arrivals(start)) / window
        rows.append({"t": round(start, 3), "target": round(target, 1), **figures(bucket, window)})
    return rows


def phase_figures(events: Sequence[Event], schedule: SpikeSchedule) -> list[dict[str, Any]]:
    """:func:`figures` per phase, by time of answer, and ``drain``: the answers after the end
    (to requests sent before it), if any."""
    rows = []
    for phase in schedule.phases:
        inside = [event for event in events if phase.start <= event[2] < phase.end]
        target = (phase.arrivals_after - phase.arrivals_before) / phase.seconds
        rows.append(
            {
                "phase": phase.name,
                "start": phase.start,
                "seconds": phase.seconds,
                "target": round(target, 1),
                **figures(inside, phase.seconds),
            }
        )
    after = [event for event in events if event[2] >= schedule.seconds]
    if after:
        drained = max(event[2] for event in after) - schedule.seconds
        rows.append(
            {
                "phase": "drain",
                "start": schedule.seconds,
                "seconds": round(drained, 3),
                "target": 0.0,
                # No rate: the drain lasts as long as its slowest answer, which makes no rate.
                **figures(after, 0.0),
            }
        )
    return rows
