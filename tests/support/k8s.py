"""The rendered Kubernetes manifests, and the real servers that stand in for a cluster.

``rendered(overlay)`` runs ``kubectl kustomize`` over ``deploy/k8s/overlays/<overlay>``
(or any directory under ``deploy/k8s``), so every test reads exactly what
``kubectl apply -k`` would send. The process helpers start Debian's PgBouncer, nginx
and Prometheus on this machine's loopback, configured from those manifests.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml  # type: ignore[import-untyped]

from tests.support.processes import ROOT
from tests.support.waiting import wait_until

DEPLOY = ROOT / "deploy" / "k8s"
OVERLAYS = ("production-sealed", "production-vault", "staging")


def require_tool(name: str) -> str:
    """The tool's path; CI installs it (.ci/run), so a missing tool fails there."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if os.environ.get("BOURSE_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the manifests (kubectl kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / target)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def rendered(overlay: str = "production-sealed") -> list[dict[str, Any]]:
    target = overlay if "/" in overlay else f"overlays/{overlay}"
    return list(_render(target))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any], index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = pod_spec(workload)["containers"][index]
    return found


def config_env(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The environment the workload's first container gets: its ConfigMaps, then its env."""
    env: dict[str, str] = {}
    spec = container(workload)
    for source in spec.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update({k: str(v) for k, v in one(docs, "ConfigMap", ref["name"]).get("data", {}).items()})
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- real servers ------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    def listening() -> bool:
        if process is not None and process.poll() is not None:
            detail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the server for port {port} exited with {process.returncode}: {detail}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"something to listen on 127.0.0.1:{port}", timeout=timeout)


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def pooler_parameters(docs: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """The CloudNativePG Pooler's pool mode and PgBouncer parameters, as shipped."""
    pooler = one(docs, "Pooler", "bourse-db-pooler-rw")["spec"]["pgbouncer"]
    return pooler["poolMode"], {k: str(v) for k, v in pooler.get("parameters", {}).items()}


@contextmanager
def pgbouncer(port: int, work: Path, pool_mode: str, parameters: dict[str, str]) -> Iterator[PgBouncer]:
    """Debian's PgBouncer in front of the local PostgreSQL (127.0.0.1:5432, trust auth).

    It refuses to run as root, so it runs as the postgres user, from a folder that
    user can read.
    """
    binary = require_tool("pgbouncer")
    del work  # pytest's folders are private to root; the postgres user needs its own
    work = Path(tempfile.mkdtemp(prefix="bourse-pgbouncer-"))
    work.chmod(0o777)
    log = work / "pgbouncer.log"
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "any",
        "pool_mode": pool_mode,
        "logfile": str(log),
        "pidfile": str(work / "pgbouncer.pid"),
        "admin_users": "postgres",
        **parameters,
    }
    config = work / "pgbouncer.ini"
    config.write_text(
        "[databases]\n* = host=127.0.0.1 port=5432 user=postgres\n\n[pgbouncer]\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    config.chmod(0o644)
    args = [binary, "-u", "postgres", str(config)] if os.geteuid() == 0 else [binary, str(config)]
    output = (work / "stderr.log").open("w")
    process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=process, log=work / "stderr.log")
        yield PgBouncer(port, process, log)
    finally:
        _stop(process)
        output.close()
        shutil.rmtree(work, ignore_errors=True)


# --- nginx: the ingress controller in front of the pods -----------------------------------


class Nginx:
    """Debian's nginx balancing over an upstream of pod ports, changed by reloading
    (as ingress-nginx applies endpoint changes: new connections go to the new set,
    requests in flight finish where they are)."""

    def __init__(self, port: int, work: Path, next_upstream: str) -> None:
        self.port = port
        self.work = work
        self.binary = require_tool("nginx")
        self.next_upstream = next_upstream
        self.process: subprocess.Popen[bytes] | None = None
        self.upstreams: list[int] = []
        for folder in ("logs", "tmp"):
            (work / folder).mkdir(parents=True, exist_ok=True)
        (work / "tmp").chmod(0o777)

    def _write(self) -> None:
        servers = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in self.upstreams)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        tmp = self.work / "tmp"
        (self.work / "nginx.conf").write_text(
            f"""{user}worker_processes 2;
pid {self.work}/nginx.pid;
error_log {self.work}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream bourse {{
{servers}    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    # A reload closes idle client keep-alive connections, which ingress-nginx's
    # endpoint updates (no reload) never do: one request per client connection keeps
    # that artefact of the stand-in out of the figures.
    keepalive_timeout 0;
    location / {{
      proxy_pass http://bourse;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-ID $request_id;
      proxy_next_upstream {self.next_upstream};
      proxy_read_timeout 30s;
    }}
  }}
}}
"""
        )

    def start(self, upstreams: list[int]) -> None:
        self.upstreams = list(upstreams)
        self._write()
        conf = str(self.work / "nginx.conf")
        check = subprocess.run(
            [self.binary, "-t", "-q", "-c", conf, "-p", str(self.work)], capture_output=True, check=False
        )
        assert check.returncode == 0, check.stderr.decode()
        self.process = subprocess.Popen(
            [self.binary, "-c", conf, "-p", str(self.work), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, process=self.process, log=self.work / "logs" / "error.log")

    def set_upstreams(self, upstreams: list[int]) -> None:
        """Change the upstream set and reload (SIGHUP to the master)."""
        assert self.process is not None
        self.upstreams = list(upstreams)
        self._write()
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


# --- Prometheus: scraping pods as the PodMonitors make it ---------------------------------


class Prometheus:
    """Debian's Prometheus scraping static targets that carry the ``namespace`` and
    ``pod`` labels a PodMonitor gives every target."""

    def __init__(self, port: int, work: Path) -> None:
        self.port = port
        self.work = work
        self.binary = require_tool("prometheus")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, targets: dict[str, tuple[int, dict[str, str]]], interval: str = "1s") -> None:
        jobs = []
        for job, (port, labels) in targets.items():
            label_lines = "".join(f"          {k}: {v}\n" for k, v in labels.items())
            jobs.append(
                f"  - job_name: {job}\n    scrape_interval: {interval}\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{port}']\n        labels:\n{label_lines}"
            )
        config = self.work / "prometheus.yml"
        self.work.mkdir(parents=True, exist_ok=True)
        config.write_text(f"global:\n  scrape_interval: {interval}\nscrape_configs:\n" + "".join(jobs))
        log = self.work / "prometheus.log"
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, timeout=60, process=self.process, log=log)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_until(self, expr: str, predicate: Any, timeout: float = 60.0) -> float | None:
        """The value of ``expr`` once ``predicate`` accepts it (it may accept None)."""
        last: list[float | None] = []

        def met() -> list[float | None]:  # the value in a list: 0 and None may be what is awaited
            last[:] = [self.value(expr)]
            return last if predicate(last[0]) else []

        return wait_until(
            met,
            lambda: f"{expr} to meet the condition; last value {last[0] if last else None}",
            timeout=timeout,
            interval=0.5,
        )[0]

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
