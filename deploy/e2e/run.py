"""``make compose-e2e``: the compose stack, built from this checkout, driven end to end.

It brings up a fresh stack (compose.yaml plus deploy/e2e/compose.e2e.yaml, with
fresh secrets in a temporary folder), waits for every healthcheck, then, through
nginx on 127.0.0.1:8080 as a client would:

- checks what the running stack is made of: published ports on 127.0.0.1 only,
  Bourse's containers as uid 1000 on read-only root filesystems with no secret in
  their environment, Bourse as PID 1, Redis with noeviction and append-only
  persistence behind a password;
- registers a client, deposits through the simulator and sees the worker credit it;
- places and cancels an order and receives both updates on the WebSocket;
- withdraws, then runs ``bourse ledger verify`` in the api container;
- checks nginx: X-Request-ID passed through, the body-size limit, the client's
  address forwarded and believed only from nginx;

then the fault checks: Redis down while a deposit's job commits (it waits in the
outbox: flaw 11), then SIGKILLed and restarted with jobs queued (none lost), the
worker stopped during a 20-second job (it finishes, the worker exits 0, the job
never runs again), PostgreSQL restarted under traffic (the API turns unready and
ready again without a restart; nothing but 200 or, while the database is down,
503). It ends with ``down --volumes`` and checks that nothing is left.

Each step prints how long it took; the first failed check stops the run with the
evidence (statuses, log lines) and the stack's logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
from websockets.sync.client import ClientConnection, connect

from deploy.stack import ROOT, Stack, StackError

PASSWORD = "correct horse battery staple"
SPOOFED = "203.0.113.9"
BOURSE_SERVICES = ("migrate", "api", "stream", "worker", "scheduler", "psp-sim")
SECRET_NAMES = ("postgres_password", "redis_password", "jwt_secret", "totp_key", "psp_api_key", "psp_secret")


class CheckFailed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def key() -> str:
    return str(uuid.uuid4())


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5) -> Any:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` and its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise CheckFailed(f"{what}: not within {timeout:.0f}s (last: {last!r})")


@dataclass
class Client:
    """A signed-in API client going through nginx."""

    http: httpx.Client
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def get(self, path: str) -> Any:
        response = self.http.get(path, headers=self.auth)
        check(response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def post(self, path: str, body: dict[str, Any], expect: int = 201) -> Any:
        response = self.http.post(path, json=body, headers={**self.auth, "Idempotency-Key": key()})
        check(response.status_code == expect, f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def wallet(self, asset: str) -> dict[str, Any]:
        wallets = self.get("/api/v1/wallets")["wallets"]
        found: dict[str, Any] = next((w for w in wallets if w["asset"] == asset), {"available": "0.00", "held": "0.00"})
        return found


@dataclass
class Sample:
    at: float
    path: str
    status: int | None
    error: str | None
    request_id: str | None


@dataclass
class Traffic:
    """Requests through nginx in a loop, on a thread, every answer recorded."""

    base: str
    token: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        paths = ["/readyz", "/api/v1/wallets", "/api/v1/assets", "/api/v1/orders?status=all"]
        with httpx.Client(base_url=self.base, timeout=10.0) as http:
            i = 0
            while not self._stop.is_set():
                path = paths[i % len(paths)]
                i += 1
                request_id = f"e2e-pg-{i}"
                headers = {"authorization": f"Bearer {self.token}", "X-Request-ID": request_id}
                try:
                    response = http.get(path, headers=headers)
                    error = None
                    with contextlib.suppress(ValueError):
                        body = response.json()
                        error = body.get("error") if isinstance(body, dict) else None
                    self.samples.append(Sample(time.monotonic(), path, response.status_code, error, request_id))
                except httpx.HTTPError as exc:
                    self.samples.append(Sample(time.monotonic(), path, None, type(exc).__name__, request_id))
                time.sleep(0.05)


class E2E:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.secrets = Path(tempfile.mkdtemp(prefix="bourse-e2e-secrets-"))
        subprocess.run(["bash", str(ROOT / "deploy/compose-secrets.sh"), str(self.secrets)], check=True, cwd=ROOT)
        self.http_port = 8080
        env = {
            "APP_IMAGE": args.image,
            "SECRETS_DIR": str(self.secrets),
            "HTTP_PORT": str(self.http_port),
            "PSP_SIM_PORT": str(args.psp_sim_port),
        }
        files = [str(ROOT / "compose.yaml"), str(ROOT / "deploy/e2e/compose.e2e.yaml")]
        self.stack = Stack.from_args(args.compose, args.project, files, env)
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.http = httpx.Client(base_url=self.base, timeout=15.0)
        self.timings: list[tuple[str, float]] = []
        self.client = Client(self.http)

    # --- plumbing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"\n--> {name}", flush=True)
        start = time.monotonic()
        yield
        took = time.monotonic() - start
        self.timings.append((name, took))
        print(f"    ok ({took:.1f} s)", flush=True)

    def note(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def secret(self, name: str) -> str:
        return (self.secrets / name).read_text().strip()

    def redis_cli(self, *args: str) -> str:
        script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli --no-raw "$@"'
        return self.stack.exec("redis", "sh", "-c", script, "redis-cli", *args).strip()

    def redis_raw(self, *args: str) -> str:
        script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli --raw "$@"'
        return self.stack.exec("redis", "sh", "-c", script, "redis-cli", *args).strip()

    def sql(self, query: str) -> str:
        return self.stack.exec("postgres", "psql", "-U", "bourse", "-d", "bourse", "-tAc", query).strip()

    def api_log_events(self, event: str, since: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.stack.logs("api", since=since), event)

    # --- the run ----------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        try:
            with self.step("stack up: a fresh stack, every healthcheck passing"):
                self.stack.run("down", "--volumes", "--remove-orphans", timeout=300)
                self.stack.run("up", "--detach", "--no-build", timeout=600)
                self.note(f"healthy after {self.stack.wait_healthy(timeout=300):.1f} s")
            with self.step("the running stack: loopback ports, uid 1000, read-only, secrets as files, Redis"):
                self.check_running_stack()
            with self.step("a client registers, deposits through the simulator, and the worker credits it"):
                self.register_and_deposit()
            with self.step("an order placed and cancelled, both updates on the WebSocket through nginx"):
                self.order_over_websocket()
            with self.step("a withdrawal, then `bourse ledger verify` in the api container"):
                self.withdraw_and_verify()
            with self.step("nginx: X-Request-ID, the body-size limit, the client's address"):
                self.check_nginx()
            with self.step("the web UI through nginx: a client route, its hashed assets, the security headers"):
                self.check_web_ui()
            with self.step("fault: Redis down when a job commits, then killed with jobs queued; none lost"):
                self.fault_redis_restart()
            with self.step("fault: `docker stop` of the worker during a 20 s job"):
                self.fault_worker_stop()
            with self.step("fault: PostgreSQL restarted under traffic"):
                self.fault_postgres_restart()
            with self.step("ledger verify after the faults"):
                self.note(self.stack.exec("api", "bourse", "ledger", "verify").strip().splitlines()[-1])
        except (CheckFailed, StackError, httpx.HTTPError) as exc:
            print(f"\nFAILED: {exc}", file=sys.stderr, flush=True)
            self.dump_logs()
            raise
        finally:
            if not self.args.keep:
                with self.step("down --volumes: nothing left behind"):
                    self.down()
            shutil.rmtree(self.secrets, ignore_errors=True)
            self.http.close()
        print("\ncompose-e2e: every check passed")
        for name, took in self.timings:
            print(f"  {took:6.1f} s  {name}")
        print(f"  {time.monotonic() - started:6.1f} s  in all")

    def dump_logs(self) -> None:
        with contextlib.suppress(StackError, subprocess.SubprocessError):
            print(self.stack.run("ps", check=False), file=sys.stderr)
            for service in self.stack.services():
                with contextlib.suppress(StackError):
                    print(f"--- logs: {service} (last 60 lines) ---", file=sys.stderr)
                    print("\n".join(self.stack.logs(service).splitlines()[-60:]), file=sys.stderr)

    def down(self) -> None:
        self.stack.run("down", "--volumes", "--remove-orphans", timeout=300)
        label = f"label=com.docker.compose.project={self.stack.project}"
        left = {
            "containers": self.stack.docker_run("ps", "--all", "--quiet", "--filter", label).split(),
            "volumes": self.stack.docker_run("volume", "ls", "--quiet", "--filter", label).split(),
            "networks": self.stack.docker_run("network", "ls", "--quiet", "--filter", label).split(),
        }
        check(not any(left.values()), f"left behind after down: {left}")

    # --- checks -----------------------------------------------------------------------

    def check_running_stack(self) -> None:
        containers = {c.service: c for c in self.stack.containers()}
        published: dict[str, list[str]] = {}
        for service, container in containers.items():
            for port, bindings in (container.raw["HostConfig"].get("PortBindings") or {}).items():
                for binding in bindings or []:
                    published.setdefault(service, []).append(f"{binding.get('HostIp')}:{binding['HostPort']}->{port}")
                    check(binding.get("HostIp") == "127.0.0.1", f"{service} publishes {port} on {binding}")
        check(set(published) == {"nginx", "psp-sim"}, f"published ports: {published}")
        self.note(f"published, all on 127.0.0.1: {published}")
        secrets = {name: self.secret(name) for name in SECRET_NAMES}
        for service, container in containers.items():
            config = container.raw["Config"]
            text = json.dumps([config.get("Env"), config.get("Cmd"), config.get("Entrypoint")])
            leaked = [name for name, value in secrets.items() if value in text]
            check(not leaked, f"{service}: the value of {leaked} is in its environment or command")
            if service in BOURSE_SERVICES:
                check(config.get("User") == "1000:1000", f"{service} runs as {config.get('User')!r}")
                check(container.raw["HostConfig"].get("ReadonlyRootfs") is True, f"{service}: root is writable")
        self.note("no secret in any container's environment or command; Bourse runs as 1000:1000, read-only")
        cmdline = self.stack.exec("api", "cat", "/proc/1/cmdline").split("\0")
        check(
            len(cmdline) > 2 and cmdline[1].endswith("/bin/bourse") and cmdline[2] == "serve",
            f"api PID 1 is not `bourse serve`: {cmdline}",
        )
        self.note(f"api PID 1: {' '.join(c for c in cmdline if c)}")
        for setting, expected in (("maxmemory-policy", "noeviction"), ("appendonly", "yes"), ("appendfsync", "always")):
            value = self.redis_raw("CONFIG", "GET", setting).splitlines()[-1]
            check(value == expected, f"Redis {setting} is {value!r}, not {expected!r}")
        anonymous = self.stack.run("exec", "-T", "redis", "redis-cli", "ping", check=False, stderr=True)
        check("NOAUTH" in anonymous, f"Redis answers without its password: {anonymous!r}")
        self.note("Redis: maxmemory-policy noeviction, appendonly yes, appendfsync always, password required")

    def register_and_deposit(self) -> None:
        email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
        response = self.http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        check(response.status_code == 201, f"register: {response.status_code} {response.text}")
        response = self.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        check(response.status_code == 200, f"login: {response.status_code} {response.text}")
        self.client.token = response.json()["access_token"]
        deposit = self.deposit("1500.00")
        self.wait_credited([deposit])
        check(self.client.wallet("USD")["available"] == "1500.00", f"wallet: {self.client.wallet('USD')}")
        self.note(f"deposit {deposit} succeeded; USD available 1500.00")

    def deposit(self, amount: str) -> str:
        deposit = self.client.post("/api/v1/deposits", {"asset": "USD", "amount": amount})
        checkout = deposit["checkout_url"]
        check(checkout.startswith(f"http://127.0.0.1:{self.args.psp_sim_port}/"), f"checkout URL {checkout}")
        approved = httpx.post(f"{checkout}/approve", timeout=10)
        check(approved.status_code == 200, f"approve: {approved.status_code} {approved.text[:200]}")
        return str(deposit["id"])

    def wait_credited(self, deposits: list[str], timeout: float = 90.0) -> None:
        def states() -> bool:
            found = [self.client.get(f"/api/v1/deposits/{d}")["state"] for d in deposits]
            check("failed" not in found and "needs_review" not in found, f"deposit states {found}")
            return all(state == "succeeded" for state in found)

        wait_until(f"deposits {deposits} credited", states, timeout=timeout)

    def order_over_websocket(self) -> None:
        url = f"ws://127.0.0.1:{self.http_port}/api/v1/ws"
        with connect(url, open_timeout=10, additional_headers={"X-Request-ID": "e2e-websocket"}) as ws:
            messages = Messages(ws)
            ws.send(json.dumps({"op": "auth", "token": self.client.token}))
            messages.expect(lambda m: m.get("type") == "authenticated", "authenticated")
            ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
            messages.expect(lambda m: m.get("type") == "subscribed" and m.get("channel") == "orders", "subscribed")
            ws.send(json.dumps({"op": "subscribe", "channel": "book", "instrument": "EUR-USD"}))
            messages.expect(lambda m: m.get("type") == "subscribed" and m.get("channel") == "book", "subscribed")
            order = self.client.post(
                "/api/v1/orders",
                {"instrument": "EUR-USD", "side": "buy", "type": "limit", "price": "1.09000", "quantity": "100.00"},
            )
            check(order["status"] == "open", f"order {order}")
            opened = messages.expect(
                lambda m: m.get("type") == "order" and m.get("id") == order["id"], f"order {order['id']} update"
            )
            check(opened["status"] == "open", f"first update {opened}")
            messages.expect(lambda m: m.get("type") == "delta" and m.get("instrument") == "EUR-USD", "book delta")
            response = self.http.delete(f"/api/v1/orders/{order['id']}", headers=self.client.auth)
            check(response.status_code == 200, f"cancel: {response.status_code} {response.text}")
            cancelled = messages.expect(
                lambda m: m.get("type") == "order" and m.get("id") == order["id"] and m.get("status") == "cancelled",
                f"order {order['id']} cancelled",
            )
        self.note(f"order {order['id']}: 'open' then 'cancelled' ({cancelled.get('cancel_reason')}) on the WebSocket")

    def withdraw_and_verify(self) -> None:
        withdrawal = self.client.post(
            "/api/v1/withdrawals", {"asset": "USD", "amount": "100.00", "destination": "GB33BUKB20201555555555"}
        )
        check(withdrawal["state"] == "approved", f"withdrawal {withdrawal}")

        def paid() -> bool:
            state = self.client.get(f"/api/v1/withdrawals/{withdrawal['id']}")["state"]
            check(state not in {"failed", "rejected", "cancelled"}, f"withdrawal state {state}")
            return bool(state == "succeeded")

        wait_until(f"withdrawal {withdrawal['id']} paid", paid, timeout=90)
        usd = self.client.wallet("USD")
        check(usd["available"] == "1400.00", f"USD wallet after the withdrawal: {usd}")
        self.note(f"withdrawal {withdrawal['id']} succeeded; USD available 1400.00")
        verify = self.stack.exec("api", "bourse", "ledger", "verify")
        self.note(f"bourse ledger verify exited 0: {verify.strip().splitlines()[-1]}")

    def check_nginx(self) -> None:
        request_id = f"e2e-{uuid.uuid4().hex[:12]}"
        response = self.http.get("/api/v1/version", headers={"X-Request-ID": request_id})
        check(response.status_code == 200, f"version: {response.status_code}")
        check(response.headers.get("x-request-id") == request_id, f"X-Request-ID back: {response.headers}")
        logged = [e for e in self.api_log_events("http_request") if e.get("request_id") == request_id]
        check(logged, f"no api log line with request_id {request_id}")
        self.note(f"X-Request-ID {request_id} came back and is on the api's log line")

        big = b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        response = self.http.post(
            "/api/v1/auth/login", content=big, headers={"content-type": "application/json", "X-Request-ID": request_id}
        )
        check(response.status_code == 413, f"2 MiB body: {response.status_code}")
        check(response.json().get("error") == "payload_too_large", f"2 MiB body: {response.text[:200]}")
        check(response.headers.get("x-request-id") == request_id, f"413 X-Request-ID: {response.headers}")
        self.note("a 2 MiB body is refused by nginx: 413 payload_too_large, in Bourse's error format")

        edge = self.stack.container("nginx").raw["NetworkSettings"]["Networks"]
        gateway = next(v["Gateway"] for k, v in edge.items() if k.endswith("_edge"))
        since = self.now()
        response = self.http.post(
            "/api/v1/auth/login",
            json={"email": "nobody@example.com", "password": "not the password at all"},
            headers={"X-Forwarded-For": SPOOFED},
        )
        check(response.status_code == 401, f"failed login: {response.status_code}")
        worker_ip = next(iter(self.stack.container("worker").raw["NetworkSettings"]["Networks"].values()))["IPAddress"]
        direct = (
            "import json, sys, urllib.error, urllib.request\n"
            "body = json.dumps({'email': 'nobody@example.com', 'password': 'not the password at all'}).encode()\n"
            "request = urllib.request.Request('http://api:8000/api/v1/auth/login', data=body, method='POST',"
            f" headers={{'content-type': 'application/json', 'X-Forwarded-For': '{SPOOFED}'}})\n"
            "try:\n    urllib.request.urlopen(request, timeout=10)\n"
            "except urllib.error.HTTPError as exc:\n    sys.exit(0 if exc.code == 401 else exc.code)\n"
            "sys.exit(1)\n"
        )
        self.stack.exec("worker", "python3", "-c", direct)

        def seen() -> list[str]:
            return [str(e.get("client_ip")) for e in self.api_log_events("login_failed", since=since)]

        addresses = wait_until("two login_failed log lines", lambda: (s := seen()) and len(s) >= 2 and s)
        check(addresses == [gateway, worker_ip], f"client_ip seen {addresses}, expected [{gateway}, {worker_ip}]")
        self.note(f"through nginx the API sees {gateway} (what nginx saw), not the spoofed {SPOOFED};")
        self.note(f"straight from another container it ignores X-Forwarded-For and sees {worker_ip}")

    def check_web_ui(self) -> None:
        """The image's UI, built in its front-end stage, answered by the API through nginx."""
        page = self.http.get("/trade/BTC-EUR", headers={"Accept-Encoding": "gzip"})
        check(page.status_code == 200, f"GET /trade/BTC-EUR: {page.status_code} {page.text[:200]}")
        check(page.headers.get("content-type", "").startswith("text/html"), f"a client route: {page.headers}")
        check(page.headers.get("cache-control") == "no-cache", f"index.html is revalidated: {page.headers}")
        policy = page.headers.get("content-security-policy", "")
        check("script-src 'self'" in policy and "frame-ancestors 'none'" in policy, f"CSP: {policy!r}")
        check(page.headers.get("x-content-type-options") == "nosniff", f"nosniff: {page.headers}")
        scripts = re.findall(r'<script[^>]+src="(/assets/[^"]+\.js)"', page.text)
        check(scripts, f"index.html names no hashed script: {page.text[:400]}")
        asset = self.http.get(scripts[0], headers={"Accept-Encoding": "gzip"})
        check(asset.status_code == 200, f"GET {scripts[0]}: {asset.status_code}")
        check("immutable" in asset.headers.get("cache-control", ""), f"{scripts[0]}: {asset.headers}")
        check(asset.headers.get("content-encoding") == "gzip", f"{scripts[0]} not compressed: {asset.headers}")
        missing = self.http.get("/assets/not-built-0000.js")
        check(missing.status_code == 404, f"a missing asset: {missing.status_code}")
        self.note(f"/trade/BTC-EUR is the UI's index.html with its CSP; {scripts[0]} is gzip, cached for a year")

    def now(self) -> str:
        """A timestamp for ``docker logs --since``: the engine runs on this machine's clock."""
        return datetime.now(UTC).isoformat()

    # --- faults -----------------------------------------------------------------------

    def deposit_jobs_in_redis(self) -> list[str]:
        ids = self.redis_raw("LRANGE", "bourse:queue:deposits", "0", "-1").split()
        return [i for i in ids if self.redis_raw("HGET", f"bourse:job:{i}", "job") == "payments.deposit_event"]

    def outbox(self) -> int:
        return int(self.sql("SELECT count(*) FROM queue_jobs WHERE job = 'payments.deposit_event'"))

    def fault_redis_restart(self) -> None:
        self.stack.run("stop", "worker")
        before = self.client.wallet("USD")["available"]
        # Flaw 11: a job exists if and only if its business transaction committed, even
        # with Redis down when it commits; nothing is pushed to Redis inside a request.
        self.stack.run("stop", "redis")
        deposits = [self.deposit("10.00")]
        wait_until("the deposit's event job committed while Redis is down", lambda: self.outbox() == 1)
        check(self.stack.container("redis").status == "exited", "Redis came back by itself")
        self.note("Redis stopped: a deposit's webhook is taken and its job committed to the outbox all the same")
        self.stack.run("start", "redis")
        self.stack.wait_healthy(services=["redis"], timeout=120)
        deposits += [self.deposit("10.00") for _ in range(2)]
        wait_until("three deposit events in the outbox", lambda: self.outbox() == 3)
        # A worker on another queue relays every committed job into Redis, and runs none of them.
        self.stack.run("run", "--rm", "-T", "--no-deps", "worker", "worker", "--queue", "default", "--stop-when-empty")
        queued = self.deposit_jobs_in_redis()
        check(len(queued) == 3, f"deposit jobs in Redis before the restart: {queued}")
        check(self.outbox() == 0, f"{self.outbox()} deposit jobs still in the outbox")
        self.note(f"3 deposit jobs queued in Redis only: {queued}")
        self.stack.run("kill", "-s", "SIGKILL", "redis")
        self.stack.run("start", "redis")
        self.stack.wait_healthy(services=["redis"], timeout=120)
        after = self.deposit_jobs_in_redis()
        check(sorted(after) == sorted(queued), f"after the restart Redis holds {after}, not {queued}")
        self.note("Redis SIGKILLed and started again: the same 3 jobs are queued")
        self.stack.run("start", "worker")
        self.wait_credited(deposits)
        usd = self.client.wallet("USD")["available"]
        check(f"{float(before) + 30:.2f}" == usd, f"USD available {usd}, expected {before} + 30.00")
        failed = self.sql("SELECT count(*) FROM queue_failed_jobs")
        check(failed == "0", f"{failed} failed jobs")
        self.note(f"all 3 credited exactly once: USD available {before} -> {usd}; no failed job")

    def fault_worker_stop(self) -> None:
        self.stack.wait_healthy(services=["worker"], timeout=180)
        enqueue = (
            "import bourse_e2e_jobs\n"
            "from bourse.db import Database, unit_of_work\n"
            "from bourse.queue import enqueue\n"
            "from bourse.settings import load_settings\n"
            "db = Database.from_settings(load_settings(), name='e2e')\n"
            "with unit_of_work(db) as session:\n"
            "    print(enqueue(session, bourse_e2e_jobs.slow, {}))\n"
        )
        job_id = self.stack.exec("worker", "python3", "-c", enqueue).strip().splitlines()[-1]

        def started() -> list[dict[str, Any]]:
            return [
                e for e in log_events(self.stack.logs("worker"), "e2e_slow_job_started") if e.get("job_id") == job_id
            ]

        wait_until(f"job {job_id} started", started, timeout=90, interval=0.2)
        time.sleep(2.0)  # well into its 20 seconds
        stop_started = time.monotonic()
        self.stack.run("stop", "--timeout", "150", "worker", timeout=200)
        took = time.monotonic() - stop_started
        container = self.stack.container("worker")
        logs = self.stack.logs("worker")
        finished = [e for e in log_events(logs, "e2e_slow_job_finished") if e.get("job_id") == job_id]
        stopped = log_events(logs, "worker_stopped")
        check(container.exit_code == 0, f"the worker exited {container.exit_code} (137 = killed)")
        check(finished, f"job {job_id} did not finish:\n{logs[-3000:]}")
        check(stopped and stopped[-1].get("exit_code") == 0, f"worker_stopped: {stopped[-1:]}")
        check(10.0 < took < 150.0, f"docker stop took {took:.1f}s: it did not wait for the job")
        self.note(f"`docker stop` took {took:.1f} s: job {job_id} finished, then the worker exited 0")
        check(self.redis_raw("EXISTS", f"bourse:job:{job_id}") == "0", "the job is still in Redis")
        reserved = self.redis_raw("ZRANGE", "bourse:queue:default:reserved", "0", "-1").split()
        check(job_id not in reserved, "the job is still reserved")
        self.stack.run("start", "worker")
        self.stack.wait_healthy(services=["worker"], timeout=180)
        time.sleep(5.0)
        runs = started()
        check(len(runs) == 1, f"job {job_id} started {len(runs)} times")
        self.note("restarted worker: the job is gone from Redis and never started again")

    def fault_postgres_restart(self) -> None:
        api_before = self.stack.container("api")
        traffic = Traffic(self.base, self.client.token)
        traffic.start()
        try:
            time.sleep(2.0)
            down_at = time.monotonic()
            self.stack.run("stop", "postgres", timeout=120)
            wait_until("/readyz 503 while PostgreSQL is down", lambda: self.readyz() == 503, timeout=30)
            self.note(f"/readyz 503 {time.monotonic() - down_at:.1f} s after the stop began")
            time.sleep(3.0)
            self.stack.run("start", "postgres", timeout=120)
            self.stack.wait_healthy(services=["postgres"], timeout=120)
            up_at = time.monotonic()
            wait_until("/readyz 200 again", lambda: self.readyz() == 200, timeout=60)
            ready_at = time.monotonic()
            self.note(f"/readyz 200 again {ready_at - up_at:.1f} s after PostgreSQL was healthy")
            time.sleep(3.0)
        finally:
            traffic.stop()
        api_after = self.stack.container("api")
        check(
            (api_after.started_at, api_after.restart_count) == (api_before.started_at, api_before.restart_count),
            f"the api container restarted: {api_before.started_at} -> {api_after.started_at}",
        )
        samples = traffic.samples
        counts: dict[str, int] = {}
        for s in samples:
            label = f"{s.status}" + (f" {s.error}" if s.error and s.status != 200 else "")
            counts[label] = counts.get(label, 0) + 1
        self.note(f"{len(samples)} requests during the restart: {counts}")
        bad = [s for s in samples if s.status not in {200, 503}]
        late = [s for s in samples if s.status == 503 and not down_at <= s.at <= ready_at]
        if bad or late:
            raise CheckFailed(
                f"{len(bad)} answers other than 200/503 and {len(late)} 503s outside the downtime"
                f" ({len(samples)} requests, the database down for {ready_at - down_at:.1f} s);"
                f" the api's log lines for them:\n" + self.evidence(bad + late)
            )
        self.note(
            f"the api container never restarted (started {api_after.started_at}, restarts {api_after.restart_count})"
        )

    def evidence(self, samples: list[Sample]) -> str:
        """Each distinct failure once: request, status, and the error its log line names."""
        errors = {
            e.get("request_id"): e for e in log_events(self.stack.logs("api"), "unhandled_error") if e.get("request_id")
        }
        lines, seen = [], set()
        for s in samples:
            logged = errors.get(s.request_id, {})
            # The exception's own last line (SQLAlchemy adds a "(Background on this error ...)" one).
            exception = [
                line for line in str(logged.get("exception", "")).splitlines() if line and not line.startswith("(")
            ]
            cause = exception[-1].strip() if exception else "no unhandled_error line"
            key = (s.path, s.status, re.sub(r"\d+\.\d+\.\d+\.\d+", "<ip>", cause))
            if key in seen:
                continue
            seen.add(key)
            count = sum(1 for o in samples if (o.path, o.status) == (s.path, s.status))
            lines.append(
                f"    GET {s.path} -> {s.status} {s.error} (e.g. X-Request-ID {s.request_id}, {count}x): {cause}"
            )
        return "\n".join(lines)

    def readyz(self) -> int | None:
        try:
            return self.http.get("/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return None


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event, in order."""
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or f'"{event}"' not in line:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line[start:])
            if record.get("event") == event:
                found.append(record)
    return found


@dataclass
class Messages:
    """A WebSocket's messages in arrival order; each expected one is taken out, wherever it is."""

    ws: ClientConnection
    backlog: list[dict[str, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def expect(self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.backlog):
                if match(message):
                    return self.backlog.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckFailed(f"no {what} on the WebSocket; received {self.seen}")
            try:
                message = json.loads(self.ws.recv(timeout=remaining))
            except TimeoutError:
                continue
            self.seen.append(message)
            self.backlog.append(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.e2e", description=__doc__)
    parser.add_argument("--compose", default="docker compose", help="The compose command.")
    parser.add_argument("--image", default="bourse:local", help="Bourse's image, already built.")
    parser.add_argument("--project", default="bourse-e2e", help="The compose project name.")
    parser.add_argument("--psp-sim-port", type=int, default=18510, help="Host port of the simulator's checkout pages.")
    parser.add_argument("--keep", action="store_true", help="Leave the stack running afterwards.")
    args = parser.parse_args(argv)
    try:
        E2E(args).run()
    except (CheckFailed, StackError, httpx.HTTPError):
        return 1
    return 0
