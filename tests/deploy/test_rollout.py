"""A rolling update done the way Kubernetes does it, with real processes.

Real nginx (Debian's package) stands in for the ingress controller and balances
``bourse serve`` pods (each with the manifest's server processes) on PostgreSQL.
Under a steady offered load of 150 requests a second, reads and transfers with
Idempotency-Keys, a driver replaces the three pods one by one, with the timings read
from the rendered manifest:

- it starts a new pod, waits for its startup probe and then its readiness probe
  (their periods and thresholds), then adds it to nginx's upstream;
- for an old pod it runs the preStop pause then SIGTERM, SIGKILL at the grace period,
  and removes the pod from the upstream 0-2 s after the termination began, the lag
  with which endpoint removal reaches the ingress controller;
- maxSurge and maxUnavailable bound how many pods run and serve at every step.

Required: no failed request, requests completing while every old pod was going away
(the load overlapped each termination), and ``bourse ledger verify`` passes. The
control runs the same rollout without the pause and the drain (seed review, flaw 3)
and must fail requests. Each run writes its figures (requests per second served, how
long the rollout took) to var/k8s/rollout-<variant>.json, which CI prints.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bourse.db import Database
from bourse.migrations import upgrade
from tests.support.auth import TestUser, bearer, make_user
from tests.support.k8s import Nginx, config_env, container, one, pod_spec, rendered
from tests.support.ledger import fund
from tests.support.processes import ROOT, clean_env, run_bourse
from tests.support.services import make_settings
from tests.support.waiting import wait_until

NGINX_PORT = 18630
FIRST_POD_PORT = 18631
RATE = 150  # requests per second, offered
CLIENTS = 32
# Requests completed through nginx before the rollout begins, and again once the last
# old pod is gone, so that the load is flowing on both sides of the rollout.
STEADY_REQUESTS = 300
# Settings a pod takes from the manifest's ConfigMap (the rest is about the cluster).
POD_SETTINGS = (
    "BOURSE_SERVER_WORKERS",
    "BOURSE_SHUTDOWN_DRAIN_SECONDS",
    "BOURSE_SHUTDOWN_TIMEOUT_SECONDS",
    "BOURSE_HTTP_MAX_IN_FLIGHT",
    "BOURSE_DATABASE_POOL_SIZE",
    "BOURSE_DATABASE_MAX_OVERFLOW",
)


@dataclass(frozen=True)
class Plan:
    """What the rendered manifest says about the rollout."""

    replicas: int
    max_surge: int
    max_unavailable: int
    pause: float
    grace: float
    startup_period: float
    startup_failures: int
    readiness_period: float
    readiness_successes: int
    readiness_failures: int
    progress_deadline: float
    ingress_next_upstream: str
    env: dict[str, str]

    @classmethod
    def from_manifests(cls) -> Plan:
        docs = rendered()
        api = one(docs, "Deployment", "bourse-api")
        spec = container(api)
        rolling = api["spec"]["strategy"]["rollingUpdate"]
        startup, readiness = spec["startupProbe"], spec["readinessProbe"]
        env = config_env(docs, api)
        ingress = one(docs, "Ingress", "bourse-api")["metadata"]["annotations"]
        return cls(
            replicas=one(docs, "HorizontalPodAutoscaler", "bourse-api")["spec"]["minReplicas"],
            max_surge=int(rolling["maxSurge"]),
            max_unavailable=int(rolling["maxUnavailable"]),
            pause=float(spec["lifecycle"]["preStop"]["sleep"]["seconds"]),
            grace=float(pod_spec(api)["terminationGracePeriodSeconds"]),
            startup_period=float(startup["periodSeconds"]),
            startup_failures=int(startup["failureThreshold"]),
            readiness_period=float(readiness["periodSeconds"]),
            readiness_successes=int(readiness.get("successThreshold", 1)),
            readiness_failures=int(readiness["failureThreshold"]),
            progress_deadline=float(api["spec"].get("progressDeadlineSeconds", 600)),
            ingress_next_upstream=ingress["nginx.ingress.kubernetes.io/proxy-next-upstream"],
            env={k: env[k] for k in POD_SETTINGS},
        )


@dataclass
class Pod:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None
    killed: bool = False
    # Requests the load had completed when the pod's termination began, and when it exited.
    completed_at_termination: int | None = None
    completed_at_exit: int | None = None

    def probe(self, path: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Load:
    """Steady offered load through nginx: reads and transfers, each answer recorded."""

    base: str
    headers: list[dict[str, str]]
    recipients: list[str]
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    finished: float = 0.0

    def _client(self, index: int) -> None:
        rng = random.Random(index)  # noqa: S311 - a reproducible mix of requests, not a secret
        interval = CLIENTS / RATE
        next_at = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                next_at += interval
                sender = rng.randrange(len(self.headers))
                kind = "transfer" if rng.random() < 0.4 else "read"
                try:
                    if kind == "read":
                        response = client.get("/api/v1/wallets", headers=self.headers[sender])
                        ok = response.status_code == 200
                    else:
                        recipient = self.recipients[
                            (sender + 1 + rng.randrange(len(self.recipients) - 1)) % len(self.recipients)
                        ]
                        response = client.post(
                            "/api/v1/transfers",
                            json={"to_user_id": recipient, "asset": "USD", "amount": "0.01"},
                            headers={**self.headers[sender], "Idempotency-Key": str(uuid.uuid4())},
                        )
                        ok = response.status_code == 201
                    outcome = f"{kind} {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, outcome = False, f"{kind} {type(exc).__name__}"
                with self.lock:
                    self.statuses[outcome] += 1
                    if not ok:
                        self.failures.append((time.monotonic() - self.started, outcome))
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    def run(self) -> list[threading.Thread]:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        return threads

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def wait_for_requests(self, count: int, what: str) -> None:
        """Until ``count`` more requests have completed, whatever their outcome."""
        target = self.total + count
        wait_until(lambda: self.total >= target, lambda: f"{count} requests to complete {what} ({self.total} in all)")


class Cluster:
    """The Deployment's pods, started and stopped as the kubelet would."""

    def __init__(self, plan: Plan, database_url: str, work: Path, *, pause: float, drain: str) -> None:
        self.plan = plan
        self.env = clean_env(
            BOURSE_DATABASE_URL=database_url,
            BOURSE_LOG_LEVEL="warning",
            **{**plan.env, "BOURSE_SHUTDOWN_DRAIN_SECONDS": drain},
        )
        self.pause = pause
        self.work = work
        self.next_port = FIRST_POD_PORT
        self.pods: list[Pod] = []
        self.terminations: list[threading.Thread] = []
        self.terminating: set[str] = set()

    def surge(self) -> int:
        """Pods running and not terminating, beyond the replica count (maxSurge bounds it)."""
        live = [p for p in self.pods if p.process.poll() is None and p.name not in self.terminating]
        return len(live) - self.plan.replicas

    def start_pod(self) -> Pod:
        port, self.next_port = self.next_port, self.next_port + 1
        name = f"bourse-api-{port}"
        log = self.work / f"{name}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "bourse", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        pod = Pod(name, port, process, log)
        self.pods.append(pod)
        return pod

    def wait_ready(self, pod: Pod) -> None:
        """The startup probe (/livez) until it passes, then the readiness probe (/readyz)
        at its period until it has passed successThreshold times in a row."""
        plan = self.plan
        for attempt in range(plan.startup_failures + 1):
            if pod.probe("/livez"):
                break
            assert attempt < plan.startup_failures, f"{pod.name} failed its startup probe: the kubelet restarts it"
            time.sleep(plan.startup_period)
        successes = 0

        def ready() -> bool:
            nonlocal successes
            assert pod.process.poll() is None, f"{pod.name} exited with {pod.process.returncode}"
            successes = successes + 1 if pod.probe("/readyz") else 0
            return successes >= plan.readiness_successes

        # The probe's own period; the Deployment gives up on a rollout that makes no
        # progress for progressDeadlineSeconds.
        wait_until(
            ready,
            f"{pod.name} to pass its readiness probe",
            timeout=plan.progress_deadline,
            interval=plan.readiness_period,
        )
        assert pod.process.poll() is None

    def terminate(self, pod: Pod, completed: Callable[[], int]) -> None:
        """preStop pause, SIGTERM, and SIGKILL once the grace period has run out.

        ``completed`` counts the load's completed requests; the pod keeps that count
        when its termination begins and when it has exited.
        """
        self.terminating.add(pod.name)
        pod.completed_at_termination = completed()

        def run() -> None:
            deadline = time.monotonic() + self.plan.grace
            time.sleep(self.pause)
            pod.process.terminate()
            try:
                pod.exit_code = pod.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pod.killed = True
                pod.process.kill()
                pod.exit_code = pod.process.wait()
            pod.completed_at_exit = completed()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.terminations.append(thread)

    def stop_all(self) -> None:
        for pod in self.pods:
            if pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait()


@pytest.fixture
def rollout_database(empty_postgres_url: str) -> str:
    upgrade(make_settings(empty_postgres_url))
    return empty_postgres_url


def _users(database_url: str, count: int = 8) -> list[TestUser]:
    database = Database.from_settings(make_settings(database_url))
    try:
        users = [make_user(database) for _ in range(count)]
        for user in users:
            fund(database, user.id, "USD", 100_000_000)
    finally:
        database.dispose()
    return users


def _rollout(database_url: str, work: Path, *, pause: float, drain: str) -> dict[str, Any]:
    plan = Plan.from_manifests()
    assert (plan.max_surge, plan.max_unavailable) == (1, 0)
    users = _users(database_url)
    settings = make_settings(database_url)
    cluster = Cluster(plan, database_url, work, pause=pause, drain=drain)
    nginx = Nginx(NGINX_PORT, work / "nginx", plan.ingress_next_upstream)
    rng = random.Random(13)  # noqa: S311 - reproducible endpoint-removal lags, not a secret
    lags: list[float] = []
    try:
        old = [cluster.start_pod() for _ in range(plan.replicas)]
        for pod in old:
            cluster.wait_ready(pod)
        serving = [pod.port for pod in old]
        nginx.start(serving)
        load = Load(f"http://127.0.0.1:{NGINX_PORT}", [bearer(settings, u) for u in users], [str(u.id) for u in users])
        threads = load.run()
        load.wait_for_requests(STEADY_REQUESTS, "before the rollout")
        began = time.monotonic()
        surge_seen = 0
        for victim in old:
            # maxSurge 1: one pod above the replica count; maxUnavailable 0: the old pod
            # goes only once its replacement is ready. Terminating pods do not count.
            new = cluster.start_pod()
            surge_seen = max(surge_seen, cluster.surge())
            assert surge_seen <= plan.max_surge
            cluster.wait_ready(new)
            serving.append(new.port)
            nginx.set_upstreams(serving)
            cluster.terminate(victim, lambda: load.total)
            lag = rng.uniform(0.0, 2.0)
            lags.append(round(lag, 3))
            time.sleep(lag)
            serving.remove(victim.port)
            nginx.set_upstreams(serving)
            assert len(serving) >= plan.replicas - plan.max_unavailable
        ready_at = time.monotonic()
        for thread in cluster.terminations:
            thread.join(timeout=plan.grace + 10)
        finished = time.monotonic()
        load.wait_for_requests(STEADY_REQUESTS, "by the new pods alone")
        load.stop.set()
        for thread in threads:
            thread.join(timeout=40)
        load.finished = time.monotonic()
    finally:
        nginx.stop()
        cluster.stop_all()
    duration = load.finished - load.started
    verify = run_bourse("ledger", "verify", env=clean_env(BOURSE_DATABASE_URL=database_url), timeout=120)
    return {
        "pause_seconds": pause,
        "drain_seconds": float(drain),
        "grace_seconds": plan.grace,
        "server_processes_per_pod": int(plan.env["BOURSE_SERVER_WORKERS"]),
        "removal_lags_seconds": lags,
        "max_surge_seen": surge_seen,
        "requests": load.total,
        "requests_per_second": round(load.total / duration, 1),
        "failed": len(load.failures),
        "failures_by_kind": dict(Counter(outcome for _, outcome in load.failures)),
        "statuses": dict(load.statuses),
        "rollout_seconds_until_new_pods_ready": round(ready_at - began, 1),
        "rollout_seconds_until_old_pods_gone": round(finished - began, 1),
        "old_pods": [{"exit_code": p.exit_code, "killed": p.killed} for p in old],
        "requests_completed_while_each_old_pod_terminated": [
            None
            if p.completed_at_exit is None or p.completed_at_termination is None
            else p.completed_at_exit - p.completed_at_termination
            for p in old
        ],
        "ledger_verify_exit_code": verify.returncode,
        "ledger_verify_output": (verify.stdout + verify.stderr)[-500:],
    }


def _save(name: str, result: dict[str, Any]) -> None:
    out = ROOT / "var" / "k8s"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rollout-{name}.json").write_text(json.dumps(result, indent=2) + "\n")


def _assert_under_load(result: dict[str, Any]) -> None:
    """Every old pod went away while requests kept completing: the rollout ran
    under load. (How many requests a second, ``requests_per_second``, is a figure of
    the run, printed by CI, not a pass mark: it depends on the machine.)"""
    during = result["requests_completed_while_each_old_pod_terminated"]
    assert len(during) == len(result["old_pods"]), result
    assert all(count is not None and count > 0 for count in during), result


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def test_a_rolling_update_fails_no_request(rollout_database: str, work: Path) -> None:
    plan = Plan.from_manifests()
    result = _rollout(rollout_database, work, pause=plan.pause, drain=plan.env["BOURSE_SHUTDOWN_DRAIN_SECONDS"])
    _save("with-pause-and-drain", result)
    _assert_under_load(result)
    assert result["failed"] == 0, result
    assert all(pod == {"exit_code": 0, "killed": False} for pod in result["old_pods"]), result
    assert result["ledger_verify_exit_code"] == 0, result


def test_control_without_the_pause_and_the_drain_the_same_rollout_fails_requests(
    rollout_database: str, work: Path
) -> None:
    result = _rollout(rollout_database, work, pause=0.0, drain="0")
    _save("control-without-pause-and-drain", result)
    _assert_under_load(result)
    assert result["failed"] > 0, result
    assert result["ledger_verify_exit_code"] == 0, result
