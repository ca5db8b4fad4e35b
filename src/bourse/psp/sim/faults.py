"""Faults a test can switch on through ``/admin/faults`` to make the simulator misbehave.

Updates are validated in full before any of them applies, so a refused update
changes nothing. Counters (``api_failures.count``, ``fail_payouts``) are taken
under the lock, so N concurrent calls consume exactly N failures.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bourse.psp.sim.store import SimError

API_ENDPOINTS = ("deposits", "payouts", "status", "transactions")
FAILURE_MODES = ("error", "error_after", "timeout")
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class ApiFailures:
    count: int = 0
    mode: str = "error"
    endpoints: tuple[str, ...] = API_ENDPOINTS
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Faults:
    duplicate_webhooks: int = 0
    out_of_order_window_seconds: float = 0.0
    webhook_delay_seconds: float = 0.0
    api_failures: ApiFailures = field(default_factory=ApiFailures)
    decline_deposits: bool = False
    fail_payouts: int = 0
    payout_settle_seconds: float = 0.2

    def to_api(self) -> dict[str, Any]:
        data = asdict(self)
        data["api_failures"]["endpoints"] = list(self.api_failures.endpoints)
        return data


@dataclass(frozen=True)
class ApiFailure:
    """One failure taken for one API call."""

    mode: str
    timeout_seconds: float


def _invalid(name: str, detail: str) -> SimError:
    return SimError(422, "invalid_fault", f"{name}: {detail}")


def _integer(name: str, value: object, high: int) -> int:
    if type(value) is not int or not 0 <= value <= high:
        raise _invalid(name, f"must be an integer from 0 to {high}")
    return value


def _seconds(name: str, value: object, high: float) -> float:
    if type(value) not in {int, float} or not isinstance(value, int | float):
        raise _invalid(name, f"must be a number of seconds from 0 to {high:g}")
    if not math.isfinite(value) or not 0 <= value <= high:
        raise _invalid(name, f"must be a number of seconds from 0 to {high:g}")
    return float(value)


def _api_failures(value: object) -> ApiFailures:
    name = "api_failures"
    if not isinstance(value, dict):
        raise _invalid(name, "must be an object")
    unknown = sorted(set(value) - {"count", "mode", "endpoints", "timeout_seconds"})
    if unknown:
        raise SimError(422, "unknown_fault", f"{name}: unknown field(s) {', '.join(map(str, unknown))}")
    count = _integer(f"{name}.count", value.get("count", 0), MAX_COUNT)
    mode = value.get("mode", "error")
    if mode not in FAILURE_MODES:
        raise _invalid(f"{name}.mode", f"must be one of {', '.join(FAILURE_MODES)}")
    endpoints = value.get("endpoints", list(API_ENDPOINTS))
    if (
        not isinstance(endpoints, list)
        or not endpoints
        or not all(isinstance(e, str) and e in API_ENDPOINTS for e in endpoints)
    ):
        raise _invalid(f"{name}.endpoints", f"must be a non-empty list of {', '.join(API_ENDPOINTS)}")
    timeout = _seconds(f"{name}.timeout_seconds", value.get("timeout_seconds", 30.0), 600)
    return ApiFailures(count, mode, tuple(dict.fromkeys(endpoints)), timeout)


def _parse(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise SimError(422, "invalid_fault", "The body must be a JSON object of faults")
    unknown = sorted(set(payload) - set(Faults.__dataclass_fields__))
    if unknown:
        raise SimError(422, "unknown_fault", f"Unknown fault(s): {', '.join(map(str, unknown))}")
    parsed: dict[str, Any] = {}
    for name, value in payload.items():
        if name == "duplicate_webhooks":
            parsed[name] = _integer(name, value, 10)
        elif name == "fail_payouts":
            parsed[name] = _integer(name, value, MAX_COUNT)
        elif name == "out_of_order_window_seconds":
            parsed[name] = _seconds(name, value, 60)
        elif name in {"webhook_delay_seconds", "payout_settle_seconds"}:
            parsed[name] = _seconds(name, value, 600)
        elif name == "decline_deposits":
            if not isinstance(value, bool):
                raise _invalid(name, "must be true or false")
            parsed[name] = value
        else:
            parsed[name] = _api_failures(value)
    return parsed


class FaultSwitchboard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()

    @property
    def current(self) -> Faults:
        with self._lock:
            return self._faults

    def update(self, payload: object) -> Faults:
        """Apply a partial update; unknown or invalid fields refuse the whole update."""
        parsed = _parse(payload)
        with self._lock:
            self._faults = replace(self._faults, **parsed)
            return self._faults

    def reset(self) -> Faults:
        with self._lock:
            self._faults = Faults()
            return self._faults

    def take_api_failure(self, endpoint: str) -> ApiFailure | None:
        """Consume one planned failure for a call to ``endpoint``, if one is pending."""
        with self._lock:
            failures = self._faults.api_failures
            if failures.count <= 0 or endpoint not in failures.endpoints:
                return None
            self._faults = replace(self._faults, api_failures=replace(failures, count=failures.count - 1))
            return ApiFailure(failures.mode, failures.timeout_seconds)

    def take_payout_failure(self) -> bool:
        with self._lock:
            if self._faults.fail_payouts <= 0:
                return False
            self._faults = replace(self._faults, fail_payouts=self._faults.fail_payouts - 1)
            return True
