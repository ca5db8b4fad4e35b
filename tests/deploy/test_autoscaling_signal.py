"""The autoscaling signals, end to end with real Prometheus (Debian's package).

Prometheus scrapes an API pod running the manifest's several server processes
(``bourse serve --workers``, multiprocess metrics on the pod's metrics port) and two
workers, each target labelled with ``namespace`` and ``pod`` as a PodMonitor does. The
prometheus-adapter rule's query (flaw 10) and the KEDA triggers' queries (flaw 6) are
read from the manifests and run as the adapter and KEDA would. Under load the
adapter's query returns the pod's in-flight requests and KEDA's the queue's depth and
age, and both rise with the load. Summing the depth over the workers instead (the
control) would count every job once per worker.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx2 as httpx
import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
import yaml  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bourse.db import Database, unit_of_work
from bourse.migrations import upgrade
from bourse.queue import enqueue
from tests.deploy.jobs_for_k8s import EFFECTS_DDL, slow_effect
from tests.support.auth import bearer, make_user
from tests.support.k8s import Prometheus, config_env, container, one, rendered, wait_for_port
from tests.support.processes import clean_env, wait_for_status
from tests.support.services import make_settings

PROMETHEUS_PORT = 18660
API_PORT, API_METRICS_PORT = 18661, 18662
WORKER_METRICS_PORTS = (18663, 18664)
NAMESPACE = "bourse"
HELD = 12  # requests held in flight on the API pod


def _adapter_query(pod: str) -> str:
    """The adapter rule's metricsQuery, expanded as prometheus-adapter expands it for
    the HPA's request: this metric, this namespace's pod, grouped by pod."""
    config = one(rendered("platform/prometheus-adapter"), "ConfigMap", "bourse-adapter-rules")
    rule = yaml.safe_load(config["data"]["config.yaml"])["rules"][0]
    series = re.match(r"^([a-z_:]+)\{", rule["seriesQuery"])
    assert series is not None
    return str(
        rule["metricsQuery"]
        .replace("<<.Series>>", series.group(1))
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{pod}"')
        .replace("<<.GroupBy>>", "pod")
    )


def _keda_queries() -> dict[str, str]:
    scaled = one(rendered(), "ScaledObject", "bourse-worker")["spec"]
    return {t["name"]: t["metadata"]["query"] for t in scaled["triggers"]}


@pytest.fixture
def database_url(empty_postgres_url: str) -> str:
    settings = make_settings(empty_postgres_url)
    upgrade(settings)
    database = Database.from_settings(settings)
    with database.engine.begin() as conn:
        conn.execute(text(EFFECTS_DDL))
    database.dispose()
    return empty_postgres_url


def _pss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return float(sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)]) / 2**20)


def test_the_adapter_and_keda_queries_return_in_flight_requests_and_queue_depth_under_load(  # noqa: PLR0915 - one scenario, step by step
    database_url: str, tmp_path: Path
) -> None:
    docs = rendered()
    api = one(docs, "Deployment", "bourse-api")
    api_env = config_env(docs, api)
    workers = int(api_env["BOURSE_SERVER_WORKERS"])
    assert workers >= 2
    worker_args = container(one(docs, "Deployment", "bourse-worker"))["args"]
    settings = make_settings(database_url)
    database = Database.from_settings(settings)
    user = make_user(database)
    processes: list[subprocess.Popen[bytes]] = []
    prometheus = Prometheus(PROMETHEUS_PORT, tmp_path / "prometheus")
    logs = []
    try:
        api_log = (tmp_path / "api.log").open("w")
        logs.append(api_log)
        api_process = subprocess.Popen(
            [sys.executable, "-m", "bourse", "serve", "--host", "127.0.0.1", "--port", str(API_PORT)],
            env=clean_env(
                BOURSE_DATABASE_URL=database_url,
                BOURSE_SERVER_WORKERS=str(workers),
                BOURSE_METRICS_PORT=str(API_METRICS_PORT),
                BOURSE_DATABASE_LOCK_TIMEOUT_MS="60000",
                BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "multiproc"),
                BOURSE_LOG_LEVEL="warning",
            ),
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
        processes.append(api_process)
        for index, port in enumerate(WORKER_METRICS_PORTS):
            worker_log = (tmp_path / f"worker-{index}.log").open("w")
            logs.append(worker_log)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bourse", *worker_args, "--import", "tests.deploy.jobs_for_k8s"],
                    env=clean_env(
                        BOURSE_DATABASE_URL=database_url,
                        BOURSE_HOST="127.0.0.1",
                        BOURSE_WORKER_METRICS_PORT=str(port),
                        BOURSE_WORKER_HEARTBEAT_PATH=str(tmp_path / f"worker-{index}.heartbeat"),
                        BOURSE_LOG_LEVEL="warning",
                    ),
                    stdout=worker_log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for_status(f"http://127.0.0.1:{API_PORT}/readyz", 200, timeout=120)
        for port in WORKER_METRICS_PORTS:
            wait_for_port(port, timeout=120)
        prometheus.start(
            {
                "bourse-api": (API_METRICS_PORT, {"namespace": NAMESPACE, "pod": "bourse-api-0"}),
                "bourse-worker-a": (WORKER_METRICS_PORTS[0], {"namespace": NAMESPACE, "pod": "bourse-worker-a"}),
                "bourse-worker-b": (WORKER_METRICS_PORTS[1], {"namespace": NAMESPACE, "pod": "bourse-worker-b"}),
            }
        )
        prometheus.wait_until("sum(up)", lambda v: v == 3, timeout=60)

        # Idle: the pod's memory leaves the HPA's 75% memory target room, and the signals are 0.
        idle_mib = _pss_mib(api_process.pid)
        request_mib = int(container(api)["resources"]["requests"]["memory"].removesuffix("Mi"))
        assert idle_mib < 0.75 * request_mib, f"idle pod uses {idle_mib:.0f} MiB of a {request_mib} MiB request"
        in_flight = _adapter_query("bourse-api-0")
        queries = _keda_queries()
        assert prometheus.wait_until(in_flight, lambda v: v == 0) == 0
        assert prometheus.wait_until(queries["queue_depth"], lambda v: v == 0) == 0

        # Load on the API: HELD requests held in flight by a lock on the users table.
        direct = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        statuses: list[int] = []
        with psycopg.connect(direct) as locker:
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

            def request() -> None:
                response = httpx.get(
                    f"http://127.0.0.1:{API_PORT}/api/v1/wallets", headers=bearer(settings, user), timeout=90
                )
                statuses.append(response.status_code)

            threads = [threading.Thread(target=request) for _ in range(HELD)]
            for thread in threads:
                thread.start()
            loaded = prometheus.wait_until(in_flight, lambda v: v is not None and v >= HELD, timeout=60)
            locker.rollback()
        for thread in threads:
            thread.join(timeout=90)
        assert loaded == HELD, "the adapter's value is the pod's in-flight requests, summed over its processes"
        assert statuses == [200] * HELD
        assert prometheus.wait_until(in_flight, lambda v: v == 0) == 0

        # Load on the queue: 40 jobs of 2 s for two workers.
        with unit_of_work(database) as session:
            for _ in range(40):
                enqueue(session, slow_effect, {"seconds": 2, "started_file": str(tmp_path / "started")})
        depth = prometheus.wait_until(queries["queue_depth"], lambda v: v is not None and v >= 30, timeout=30)
        assert depth is not None
        assert depth <= 40, "every worker reports the whole queue: KEDA's query must not add them up"
        # The control: each of the two workers reports the whole queue, so a sum over the
        # pods (what a naive trigger would take) is twice what waits.
        default = 'bourse_queue_depth{namespace="bourse", queue="default"}'
        ratio = prometheus.wait_until(
            f"sum({default}) / max({default})", lambda v: v is not None and v >= 1.8, timeout=30
        )
        assert ratio is not None
        first_age = prometheus.wait_until(queries["oldest_job_age"], lambda v: v is not None and v > 0)
        assert first_age is not None
        later_age = prometheus.wait_until(queries["oldest_job_age"], lambda v: v is not None and v > first_age + 2)
        assert later_age is not None
    finally:
        prometheus.stop()
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        database.dispose()
