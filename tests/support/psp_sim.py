"""The PSP simulator as a real process, and a real webhook receiver in the test process."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx

from tests.support.processes import clean_env, free_port, start, stop
from tests.support.waiting import wait_until

API_KEY = "test-psp-sim-api-key-4d1b7a"
SECRET = "test-psp-sim-webhook-secret-93c2e0"


def unique(prefix: str = "ref") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event

    @property
    def reference(self) -> str:
        return str(self.event["data"]["object"]["reference"])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 resets a burst of concurrent deliveries


class Receiver:
    """Records every webhook delivery; answers 500 to a reference's first N deliveries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self._failures: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real webhook endpoint would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                delivery = Delivery({k.lower(): v for k, v in self.headers.items()}, body)
                status = receiver._record(delivery)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                pass  # keep pytest's output clean

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, delivery: Delivery) -> int:
        with self._lock:
            self.deliveries.append(delivery)
            try:
                reference = delivery.reference
            except (ValueError, KeyError, TypeError):
                return 200
            remaining = self._failures.get(reference, 0)
            if remaining > 0:
                self._failures[reference] = remaining - 1
                return 500
            return 200

    def fail(self, reference: str, times: int) -> None:
        with self._lock:
            self._failures[reference] = times

    def matching(self, predicate: Callable[[Delivery], bool]) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if predicate(d)]

    def wait(self, predicate: Callable[[Delivery], bool], count: int = 1, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` deliveries match; return them in arrival order."""
        found: list[Delivery] = []

        def arrived() -> bool:
            found[:] = self.matching(predicate)
            return len(found) >= count

        wait_until(arrived, lambda: f"{count} matching deliveries ({len(found)} arrived)", timeout=timeout)
        return found

    def for_reference(self, reference: str, count: int = 1, timeout: float = 10.0) -> list[Delivery]:
        return self.wait(lambda d: d.reference == reference, count, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Simulator:
    """A running ``bourse psp-sim`` process; its output is drained so it never blocks."""

    def __init__(self, webhook_url: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["-m", "bourse", "psp-sim", "--port", str(self.port), "--webhook-url", webhook_url, *extra]
        env = clean_env(BOURSE_PSP_API_KEY=API_KEY, BOURSE_PSP_SECRET=SECRET)
        self.process: subprocess.Popen[str] = start(argv, env)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            output = self.stop()
            raise AssertionError(f"psp-sim did not start:\n{output}")
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "psp-sim listening on" in line:
                self._ready.set()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(self.process)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if hasattr(self, "client"):
            self.client.close()
        return "".join(self.lines)

    # --- Shortcuts ------------------------------------------------------------------

    def deposit(self, reference: str | None = None, amount: int = 1000, **extra: Any) -> dict[str, Any]:
        body = {"reference": reference or unique(), "amount": amount, "currency": "USD", **extra}
        response = self.client.post("/v1/deposits", json=body, headers={"Idempotency-Key": unique("key")})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def payout(self, reference: str | None = None, amount: int = 700) -> dict[str, Any]:
        body = {"reference": reference or unique(), "amount": amount, "currency": "USD", "destination": "acct-1"}
        response = self.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": unique("key")})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def approve(self, deposit_id: str) -> httpx.Response:
        return httpx.post(f"{self.url}/checkout/{deposit_id}/approve", timeout=10)

    def decline(self, deposit_id: str) -> httpx.Response:
        return httpx.post(f"{self.url}/checkout/{deposit_id}/decline", timeout=10)

    def set_faults(self, **faults: Any) -> None:
        response = self.client.put("/admin/faults", json=faults)
        assert response.status_code == 200, response.text

    def event(self, event_id: str) -> dict[str, Any]:
        events = self.client.get("/admin/events").json()["data"]
        return next(e for e in events if e["id"] == event_id)

    def wait_for_event(self, event_id: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Wait until the simulator's record of an event satisfies ``done``; return it."""

        def finished() -> dict[str, Any] | None:
            event = self.event(event_id)
            return event if done(event) else None

        record = wait_until(finished, what)
        assert record is not None
        return record

    def wait_for_status(self, path: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def current() -> dict[str, Any] | None:
            last.clear()
            last.update(self.client.get(path).json())
            return dict(last) if last.get("status") == status else None

        found = wait_until(current, lambda: f"{path} to be {status} (it is {last.get('status')})", timeout=timeout)
        assert found is not None
        return found
