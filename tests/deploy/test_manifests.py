"""Semantic tests over the rendered manifests (``kubectl kustomize`` of each overlay),
held against the code and against each other. Each names the promise of the article
or the flaw of ``shared/guide/seed-review.md`` it guards.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from starlette.routing import Match

from bourse.app import create_app, create_stream_app
from bourse.queue.registry import load_jobs
from bourse.queue.worker import DEFAULT_QUEUES
from bourse.server import STOP_MARGIN_SECONDS
from bourse.settings import Settings, env_name, is_secret_field, load_settings
from bourse.trading.matcher import MatcherService, MatcherUnavailable
from tests.support.k8s import (
    DEPLOY,
    OVERLAYS,
    config_env,
    container,
    find,
    flag,
    one,
    pod_spec,
    rendered,
    require_tool,
)
from tests.support.processes import clean_env
from tests.support.services import TEST_ENV_KEEP, make_settings

SETTINGS = frozenset(env_name(name) for name in Settings.model_fields)
SECRET_SETTINGS = frozenset(env_name(name) for name in Settings.model_fields if is_secret_field(name))
WORKLOADS = (
    ("Deployment", "bourse-api"),
    ("Deployment", "bourse-matcher"),
    ("Deployment", "bourse-stream"),
    ("Deployment", "bourse-worker"),
    ("Deployment", "bourse-scheduler"),
)
ALL_WORKLOADS = (*WORKLOADS, ("Job", "bourse-migrate"))
DIGEST = re.compile(r"^[a-z0-9.:/_-]+@sha256:[0-9a-f]{64}$")


def _pod_workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob"}]


def _env_names(docs: list[dict[str, Any]]) -> set[str]:
    names = set()
    for config in find(docs, "ConfigMap"):
        if config["metadata"]["name"].startswith("bourse-config"):
            names |= set(config.get("data", {}))
    for workload in _pod_workloads(docs):
        for spec in pod_spec(workload)["containers"]:
            names |= {item["name"] for item in spec.get("env", [])}
    return names


def _probe(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    probe: dict[str, Any] = spec[kind]
    return probe


# --- layout and rendering ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_the_whole_application(overlay: str) -> None:
    """kubectl apply -k works with no other tool: every overlay renders every piece."""
    docs = rendered(overlay)
    for kind, name in ALL_WORKLOADS:
        one(docs, kind, name)
    for kind, name in (
        ("HorizontalPodAutoscaler", "bourse-api"),
        ("ScaledObject", "bourse-worker"),
        ("PodDisruptionBudget", "bourse-api"),
        ("PodDisruptionBudget", "bourse-worker"),
        ("PodDisruptionBudget", "bourse-matcher"),
        ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "bourse-matcher"),
        ("PodMonitor", "bourse-matcher"),
        ("Service", "bourse-stream"),
        ("Ingress", "bourse-stream"),
        ("HorizontalPodAutoscaler", "bourse-stream"),
        ("PodDisruptionBudget", "bourse-stream"),
        ("NetworkPolicy", "bourse-stream"),
        ("PodMonitor", "bourse-stream"),
        ("Cluster", "bourse-db"),
        ("Pooler", "bourse-db-pooler-rw"),
        ("PrometheusRule", "bourse"),
        ("ConfigMap", "bourse-grafana-dashboard"),
    ):
        one(docs, kind, name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_app_image_is_pinned_by_digest(overlay: str) -> None:
    """Flaw 8: no mutable tags. Every container, init containers included, runs a digest."""
    for workload in _pod_workloads(rendered(overlay)):
        spec = pod_spec(workload)
        for item in [*spec["containers"], *spec.get("initContainers", [])]:
            assert DIGEST.match(item["image"]), f"{workload['metadata']['name']}: {item['image']}"


def test_make_deploy_image_edits_every_overlay() -> None:
    """The digest lives in one line per overlay, which `make deploy-image` rewrites."""
    for overlay in OVERLAYS:
        text = (DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text()
        assert len(re.findall(r"^    digest: sha256:[0-9a-f]{64}$", text, re.MULTILINE)) == 1, overlay


# --- the API Deployment ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_update_never_removes_a_pod_before_its_replacement(overlay: str) -> None:
    """The article's zero-downtime rollout: maxSurge 1, maxUnavailable 0."""
    docs = rendered(overlay)
    for _, name in WORKLOADS:
        strategy = one(docs, "Deployment", name)["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, name


def test_the_api_grace_period_outlasts_pause_drain_and_shutdown() -> None:
    """Flaw 3: SIGKILL must never cut the drain or the in-flight requests short."""
    docs = rendered()
    api = one(docs, "Deployment", "bourse-api")
    env = config_env(docs, api)
    pause = container(api)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["BOURSE_SHUTDOWN_DRAIN_SECONDS"])
    shutdown = float(env["BOURSE_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pause >= 2, "the pause must cover the endpoint propagation lag"
    assert drain > 0
    # serve --workers waits drain + shutdown + STOP_MARGIN_SECONDS before killing a process.
    assert pod_spec(api)["terminationGracePeriodSeconds"] > pause + drain + shutdown + STOP_MARGIN_SECONDS


def test_liveness_and_readiness_are_different_and_liveness_touches_no_dependency() -> None:
    """Flaw 5: readiness is /readyz, liveness and startup are /livez; and /livez really
    answers 200 while the database is unreachable, when /readyz does not."""
    api = container(one(rendered(), "Deployment", "bourse-api"))
    assert _probe(api, "readinessProbe")["httpGet"]["path"] == "/readyz"
    assert _probe(api, "livenessProbe")["httpGet"]["path"] == "/livez"
    assert _probe(api, "startupProbe")["httpGet"]["path"] == "/livez"
    settings = make_settings("postgresql://postgres@127.0.0.1:1/unreachable", redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_enable_service_links_false(overlay: str) -> None:
    """Kubernetes would otherwise inject <SERVICE>_PORT, <SERVICE>_SERVICE_HOST, ... for
    every Service in the namespace, and BOURSE_* is Bourse's own settings namespace."""
    docs = rendered(overlay)
    for workload in _pod_workloads(docs):
        assert pod_spec(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]
    # The control: what those Services would inject does land in BOURSE_*.
    injected = set()
    for service in find(docs, "Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        injected |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    assert {name for name in injected if name.startswith("BOURSE_")}, "no Service would inject a BOURSE_ name"


def test_the_api_runs_several_server_processes_with_multiprocess_metrics() -> None:
    """The per-pod in-flight metric means what php_fpm_active_processes means."""
    docs = rendered()
    api = one(docs, "Deployment", "bourse-api")
    env = config_env(docs, api)
    assert int(env["BOURSE_SERVER_WORKERS"]) >= 2
    mounts = {m["mountPath"] for m in container(api)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(api)["volumes"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/run/bourse/")
    assert "/run/bourse" in mounts
    assert "emptyDir" in volumes["run"]


def test_metrics_are_never_routed_through_the_ingress_service() -> None:
    docs = rendered()
    api = one(docs, "Deployment", "bourse-api")
    ports = {p["name"]: p["containerPort"] for p in container(api)["ports"]}
    env = config_env(docs, api)
    assert ports == {"http": int(env["BOURSE_PORT"]), "metrics": int(env["BOURSE_METRICS_PORT"])}
    ingress_backend = one(docs, "Ingress", "bourse-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(docs, "Service", ingress_backend["name"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitor = one(docs, "PodMonitor", "bourse-api")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_the_pod_disruption_budgets() -> None:
    docs = rendered()
    assert one(docs, "PodDisruptionBudget", "bourse-api")["spec"]["minAvailable"] == 2
    assert one(docs, "PodDisruptionBudget", "bourse-worker")["spec"]["maxUnavailable"] == 1
    assert one(docs, "PodDisruptionBudget", "bourse-matcher")["spec"]["minAvailable"] == 1
    assert one(docs, "PodDisruptionBudget", "bourse-stream")["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_budget_selects_its_workload_and_still_lets_a_drain_evict_one(overlay: str) -> None:
    """A budget that selects nothing protects nothing; one whose minAvailable is the
    Deployment's fixed replica count blocks every node drain."""
    docs = rendered(overlay)
    for _, name in WORKLOADS:
        workload = one(docs, "Deployment", name)
        budget = one(docs, "PodDisruptionBudget", name)["spec"]
        assert _selects(budget["selector"], workload["spec"]["template"]["metadata"]["labels"]), name
        if "replicas" in workload["spec"] and "minAvailable" in budget:
            assert budget["minAvailable"] < workload["spec"]["replicas"], name


# --- autoscaling ---------------------------------------------------------------------------


def test_the_hpa_is_exactly_the_articles() -> None:
    hpa = one(rendered(), "HorizontalPodAutoscaler", "bourse-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bourse-api"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 15)
    metrics = {
        (f"Resource:{m['resource']['name']}" if m["type"] == "Resource" else m["type"]): m for m in hpa["metrics"]
    }
    assert set(metrics) == {"Resource:cpu", "Resource:memory", "Pods"}
    assert metrics["Resource:cpu"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 65}
    assert metrics["Resource:memory"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 75}
    assert metrics["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 30
    assert up["policies"] == [{"type": "Pods", "value": 3, "periodSeconds": 60}]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    # The HPA owns the replica count: a replicas field would reset it on every apply.
    assert "replicas" not in one(rendered(), "Deployment", "bourse-api")["spec"]


def test_the_hpa_metric_is_what_the_adapter_rule_produces_from_a_series_metrics_exposes(sqlite_url: str) -> None:
    """Flaw 10: a Pods metric exists only through the adapter's rule, and the rule only
    finds series that /metrics really exposes."""
    hpa = one(rendered(), "HorizontalPodAutoscaler", "bourse-api")["spec"]
    wanted = next(m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods")
    config = one(rendered("platform/prometheus-adapter"), "ConfigMap", "bourse-adapter-rules")
    rules = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    rule = next(r for r in rules if re.fullmatch(r["name"]["matches"], wanted) and r["name"]["as"] == wanted)
    series = re.match(r"^([a-z_:]+)\{", rule["seriesQuery"])
    assert series is not None
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    with TestClient(create_app(make_settings(sqlite_url))) as client:
        exposition = client.get("/metrics").text
    assert re.search(rf"^{series.group(1)}(\{{.*\}})? ", exposition, re.MULTILINE), f"{series.group(1)} not exposed"


def test_workers_scale_on_queue_depth_and_age_from_two_replicas() -> None:
    """Flaw 6: workers scale with the backlog, on metrics the worker exports, taking the
    max over pods (every worker reports the same queue-wide numbers)."""
    scaled = one(rendered(), "ScaledObject", "bourse-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "bourse-worker"
    assert scaled["minReplicaCount"] == 2
    assert scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["triggers"] if t["type"] == "prometheus"}
    assert "bourse_queue_depth" in queries["queue_depth"]
    assert "bourse_queue_oldest_job_age_seconds" in queries["oldest_job_age"]
    for query in queries.values():
        assert re.search(r"\bmax\b", query), query
        assert not re.match(r"^sum\((?!max)", query), query
        queues = re.search(r'queue=~"([^"]+)"', query)
        assert queues is not None
        assert tuple(queues.group(1).split("|")) == DEFAULT_QUEUES
    assert "replicas" not in one(rendered(), "Deployment", "bourse-worker")["spec"]


# --- workers and scheduler -------------------------------------------------------------


def test_the_worker_runs_the_codes_queue_priority_with_the_articles_flags() -> None:
    worker = container(one(rendered(), "Deployment", "bourse-worker"))
    args = worker["args"]
    assert args[0] == "worker"
    assert tuple(flag(args, "--queue").split(",")) == DEFAULT_QUEUES
    assert (flag(args, "--tries"), flag(args, "--timeout")) == ("3", "120")
    memory_mib = int(flag(args, "--memory"))
    limit = worker["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert memory_mib < int(limit[:-2]), "the worker must recycle itself before the container is OOM-killed"


def test_the_worker_grace_period_outlasts_every_job_it_may_be_running() -> None:
    """Flaw 2: the grace period is longer than --timeout and than every job's own timeout."""
    docs = rendered()
    worker = one(docs, "Deployment", "bourse-worker")
    args = container(worker)["args"]
    queues = set(flag(args, "--queue").split(","))
    longest = max(
        [float(flag(args, "--timeout"))]
        + [spec.timeout for spec in load_jobs().values() if spec.queue in queues and spec.timeout is not None]
    )
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > longest
    retry_after = float(config_env(docs, worker)["BOURSE_QUEUE_RETRY_AFTER_SECONDS"])
    assert retry_after > longest, "a job still running would be handed to a second worker"


def test_worker_and_scheduler_liveness_use_their_heartbeats() -> None:
    docs = rendered()
    for name, probe in (("bourse-worker", "--worker"), ("bourse-scheduler", "--scheduler")):
        spec = container(one(docs, "Deployment", name))
        assert _probe(spec, "livenessProbe")["exec"]["command"] == ["bourse", "healthcheck", probe]
        heartbeat = config_env(docs, one(docs, "Deployment", name))[
            "BOURSE_WORKER_HEARTBEAT_PATH" if probe == "--worker" else "BOURSE_SCHEDULER_HEARTBEAT_PATH"
        ]
        assert any(heartbeat.startswith(m["mountPath"] + "/") for m in spec["volumeMounts"]), name
    scheduler = one(docs, "Deployment", "bourse-scheduler")
    assert container(scheduler)["args"] == ["scheduler"]
    assert scheduler["spec"]["replicas"] >= 2, "the scheduler is safe on several replicas; run two"


def test_the_migration_job_migrates_on_the_primary() -> None:
    docs = rendered()
    job = one(docs, "Job", "bourse-migrate")
    assert container(job)["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert "bourse-db-rw." in config_env(docs, job)["BOURSE_DATABASE_URL"]


# --- the matcher ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_matcher_is_a_leader_and_a_hot_standby_on_different_nodes(overlay: str) -> None:
    """Decision 0027: one leader per shard, the others stand by and take over within a
    second. Two replicas, never autoscaled, never both on one node, never both gone."""
    docs = rendered(overlay)
    matcher = one(docs, "Deployment", "bourse-matcher")
    labels = matcher["spec"]["template"]["metadata"]["labels"]
    assert container(matcher)["args"] == ["matcher"], "every shard in every process: each is a standby for all"
    assert matcher["spec"]["replicas"] == 2
    assert matcher["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one(docs, "PodDisruptionBudget", "bourse-matcher")["spec"]["minAvailable"] == 1
    spread = [c for c in pod_spec(matcher)["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert len(spread) == 1
    assert (spread[0]["maxSkew"], spread[0]["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    assert _selects(spread[0]["labelSelector"], labels)
    # Each revision spreads by itself, or the surge pod of a rollout on two nodes could
    # never be placed and maxUnavailable 0 would stall the rollout.
    assert spread[0]["matchLabelKeys"] == ["pod-template-hash"]
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        assert all(s["spec"]["scaleTargetRef"]["name"] != "bourse-matcher" for s in find(docs, kind)), kind


def test_the_matcher_probes_its_heartbeat_and_stops_within_its_grace_period() -> None:
    docs = rendered()
    matcher = one(docs, "Deployment", "bourse-matcher")
    spec = container(matcher)
    for kind in ("startupProbe", "livenessProbe"):
        assert _probe(spec, kind)["exec"]["command"] == ["bourse", "healthcheck", "--matcher"], kind
    assert "readinessProbe" not in spec, "no Service selects the matcher"
    heartbeat = config_env(docs, matcher)["BOURSE_MATCHER_HEARTBEAT_PATH"]
    volumes = {v["name"]: v for v in pod_spec(matcher)["volumes"]}
    mount = next(m for m in spec["volumeMounts"] if heartbeat.startswith(m["mountPath"] + "/"))
    assert "emptyDir" in volumes[mount["name"]], "the root filesystem is read-only"
    # On SIGTERM `bourse matcher` stops its shard threads, each after its current batch,
    # waiting at most MatcherService.stop's timeout for them: the grace period outlasts it.
    stop_timeout = inspect.signature(MatcherService.stop).parameters["timeout"].default
    assert pod_spec(matcher)["terminationGracePeriodSeconds"] >= 2 * stop_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_pods_never_match_and_the_api_and_matcher_reach_the_primary_directly(overlay: str) -> None:
    """PgBouncer in transaction mode keeps no session, so neither the leadership lock nor
    LISTEN may go through it: the matcher and the API's listener use the primary's own
    Service, with the same user, database and TLS as the pooled URL and no password in it
    (BOURSE_DATABASE_PASSWORD comes from the secrets)."""
    docs = rendered(overlay)
    api = config_env(docs, one(docs, "Deployment", "bourse-api"))
    matcher = config_env(docs, one(docs, "Deployment", "bourse-matcher"))
    migrate = config_env(docs, one(docs, "Job", "bourse-migrate"))
    for kind, name in ALL_WORKLOADS:
        assert config_env(docs, one(docs, kind, name))["BOURSE_MATCHER"] == "external", name
    assert api["BOURSE_MATCHER_SHARDS"] == matcher["BOURSE_MATCHER_SHARDS"]
    assert api["BOURSE_DATABASE_TRANSACTION_POOLING"] == "true"
    assert make_url(api["BOURSE_DATABASE_URL"]).host == POOLED_HOST
    assert matcher["BOURSE_DATABASE_TRANSACTION_POOLING"] == "false"
    direct = {
        api["BOURSE_DATABASE_DIRECT_URL"],
        matcher["BOURSE_DATABASE_DIRECT_URL"],
        matcher["BOURSE_DATABASE_URL"],
        migrate["BOURSE_DATABASE_URL"],
    }
    assert len(direct) == 1, direct
    url, pooled = make_url(direct.pop()), make_url(api["BOURSE_DATABASE_URL"])
    assert url.host == DIRECT_HOST
    assert url.password is None
    assert (url.username, url.port, url.database, dict(url.query)) == (
        pooled.username,
        pooled.port,
        pooled.database,
        dict(pooled.query),
    )
    assert dict(url.query)["sslmode"] == "require"


# --- the market-data stream ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_websocket_path_goes_to_the_stream_and_everything_else_to_the_api(overlay: str) -> None:
    """Decision 0028: /api/v1/ws of the API's host reaches the bourse-stream pods, with
    timeouts for connections that live for hours; the API's own Ingress has no such path,
    and every pod runs BOURSE_STREAM=external, so no API process serves or feeds it."""
    docs = rendered(overlay)
    api_ingress, stream_ingress = one(docs, "Ingress", "bourse-api"), one(docs, "Ingress", "bourse-stream")
    [rule] = stream_ingress["spec"]["rules"]
    assert rule["host"] == api_ingress["spec"]["rules"][0]["host"]
    assert stream_ingress["spec"]["tls"] == api_ingress["spec"]["tls"]
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/api/v1/ws", "Exact")
    assert all(p["path"] != "/api/v1/ws" for r in api_ingress["spec"]["rules"] for p in r["http"]["paths"])
    service = one(docs, "Service", path["backend"]["service"]["name"])
    stream = one(docs, "Deployment", "bourse-stream")
    assert _selects({"matchLabels": service["spec"]["selector"]}, stream["spec"]["template"]["metadata"]["labels"])
    [port] = service["spec"]["ports"]
    assert port["name"] == path["backend"]["service"]["port"]["name"]
    ports = {p["name"]: p["containerPort"] for p in container(stream)["ports"]}
    env = config_env(docs, stream)
    assert ports == {"http": int(env["BOURSE_PORT"]), "metrics": int(env["BOURSE_METRICS_PORT"])}
    assert port["targetPort"] == "http", "metrics are never routed through the ingress"
    assert container(stream)["args"][0] == "stream"
    annotations = stream_ingress["metadata"]["annotations"]
    # Longer than the server's ping interval (uvicorn's 20 s) by far: an idle subscriber stays.
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600, key
    for kind, name in ALL_WORKLOADS:
        assert config_env(docs, one(docs, kind, name))["BOURSE_STREAM"] == "external", name


def test_the_stream_probes_scales_and_stops_like_a_server() -> None:
    docs = rendered()
    stream = one(docs, "Deployment", "bourse-stream")
    spec, env = container(stream), config_env(docs, stream)
    assert _probe(spec, "readinessProbe")["httpGet"]["path"] == "/readyz"
    assert _probe(spec, "livenessProbe")["httpGet"]["path"] == "/livez"
    assert _probe(spec, "startupProbe")["httpGet"]["path"] == "/livez"
    pause = spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain, shutdown = float(env["BOURSE_SHUTDOWN_DRAIN_SECONDS"]), float(env["BOURSE_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod_spec(stream)["terminationGracePeriodSeconds"] > pause + drain + shutdown + STOP_MARGIN_SECONDS
    # One process per pod: its metrics are its own, so no multiprocess folder is needed.
    assert flag(spec["args"], "--workers") == "1"
    hpa = one(docs, "HorizontalPodAutoscaler", "bourse-stream")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bourse-stream"}
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert {m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"} == {"cpu", "memory"}
    assert "replicas" not in stream["spec"], "the HPA owns the count"
    assert one(docs, "PodDisruptionBudget", "bourse-stream")["spec"]["minAvailable"] < hpa["minReplicas"]


def test_the_stream_admits_only_the_ingress_controller_and_prometheus_and_reaches_the_pooler_redis_and_dns() -> None:
    """Snapshots and sign-ins read the database (through the pooler, like the API's
    requests); every command is heard from Redis. No primary, no internet."""
    docs = rendered()
    policy = _policy_for(docs, one(docs, "Deployment", "bourse-stream"))["spec"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {"http", "metrics"}
    assert _admits(by_port["http"], *INGRESS_CONTROLLER)
    assert not _admits(by_port["http"], *PROMETHEUS)
    assert not _admits(by_port["http"], {"kubernetes.io/metadata.name": "bourse"}, INGRESS_CONTROLLER[1])
    assert _admits(by_port["metrics"], *PROMETHEUS)
    egress = {tuple((p["port"], p["protocol"]) for p in rule["ports"]): rule["to"] for rule in policy["egress"]}
    assert set(egress) == {((5432, "TCP"),), ((6379, "TCP"),), ((53, "UDP"), (53, "TCP"))}
    data_ns = {"kubernetes.io/metadata.name": "bourse-data"}
    assert _admits(egress[((5432, "TCP"),)], *POOLER)
    assert not _admits(egress[((5432, "TCP"),)], data_ns, PRIMARY)
    assert _admits(egress[((53, "UDP"), (53, "TCP"))], *DNS)
    api = _policy_for(docs, one(docs, "Deployment", "bourse-api"))["spec"]
    redis = [rule["to"] for rule in api["egress"] if rule["ports"] == [{"port": 6379, "protocol": "TCP"}]]
    assert egress[((6379, "TCP"),)] == redis[0], "the same Redis the matcher and the API publish to"


SECRET_VALUE = "s3cret-" + "x" * 40


def _pod_settings(
    docs: list[dict[str, Any]], name: str, secrets: Path, monkeypatch: pytest.MonkeyPatch, **changes: str | None
) -> Settings:
    """The settings a pod of the workload loads, with its secrets as the overlay mounts
    them (in ``secrets``): what `bourse` reads at start-up in that pod."""
    env = {**config_env(docs, one(docs, "Deployment", name)), "BOURSE_SECRETS_DIRS": str(secrets)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    for key in [k for k in os.environ if k.upper().startswith("BOURSE_") and k not in TEST_ENV_KEEP]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def _secret_keys(overlay: str) -> list[str]:
    docs = rendered(overlay)
    if overlay == "production-vault":
        template = one(docs, "Deployment", "bourse-api")["spec"]["template"]["metadata"]["annotations"][
            "vault.hashicorp.com/agent-inject-template-bourse.env"
        ]
        return re.findall(r"^(BOURSE_[A-Z0-9_]+)=", template, re.MULTILINE)
    return list(one(docs, "SealedSecret", "bourse-secrets")["spec"]["encryptedData"])


@pytest.mark.parametrize("overlay", ["production-sealed", "production-vault"])
def test_the_pods_settings_feed_the_stream_from_redis_and_take_the_websocket_from_the_api(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded by Bourse from the pods' environment and mounted secrets: the stream's app
    builds (it refuses without Redis), and the API's app has no /api/v1/ws. The controls:
    the stream pod without BOURSE_REDIS_URL is refused, and the API pod with
    BOURSE_STREAM=in-process serves the WebSocket."""
    docs = rendered(overlay)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    keys = _secret_keys(overlay)
    if overlay == "production-vault":
        (secrets / "bourse.env").write_text("".join(f"{key}={SECRET_VALUE}\n" for key in keys))
    else:
        for key in keys:
            (secrets / key).write_text(SECRET_VALUE)

    def serves_the_websocket(app: Any) -> bool:
        scope = {"type": "websocket", "path": "/api/v1/ws", "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)

    stream = _pod_settings(docs, "bourse-stream", secrets, monkeypatch)
    assert (stream.stream, stream.redis_url) == ("external", "rediss://bourse-redis.bourse-data.svc:6379/0")
    assert stream.redis_password is not None
    assert serves_the_websocket(create_stream_app(stream))
    with pytest.raises(ValueError, match="BOURSE_REDIS_URL"):
        create_stream_app(_pod_settings(docs, "bourse-stream", secrets, monkeypatch, BOURSE_REDIS_URL=None))
    api = _pod_settings(docs, "bourse-api", secrets, monkeypatch)
    assert not serves_the_websocket(create_app(api))
    control = _pod_settings(docs, "bourse-api", secrets, monkeypatch, BOURSE_STREAM="in-process")
    assert serves_the_websocket(create_app(control))


@pytest.mark.parametrize("overlay", ["production-sealed", "production-vault"])
def test_the_pods_settings_give_the_matcher_and_the_api_listener_the_primary_with_the_password(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded by Bourse itself from each pod's environment and its mounted secrets (a file
    per key for Sealed Secrets, the agent's KEY=VALUE file for Vault): the direct URL gets
    BOURSE_DATABASE_PASSWORD, the matcher does not refuse to start, and the API runs no
    matcher. The control: the matcher's pod without its direct URL is refused."""
    docs = rendered(overlay)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    keys = _secret_keys(overlay)
    assert "BOURSE_DATABASE_PASSWORD" in keys
    if overlay == "production-vault":
        (secrets / "bourse.env").write_text("".join(f"{key}={SECRET_VALUE}\n" for key in keys))
    else:
        for key in keys:
            (secrets / key).write_text(SECRET_VALUE)

    api = _pod_settings(docs, "bourse-api", secrets, monkeypatch)
    assert api.matcher == "external"
    assert (api.database.host, api.database_transaction_pooling) == (POOLED_HOST, True)
    assert api.direct_database is not None
    assert (api.direct_database.host, api.direct_database.password) == (DIRECT_HOST, SECRET_VALUE)

    matcher = _pod_settings(docs, "bourse-matcher", secrets, monkeypatch)
    assert matcher.direct_database is not None
    assert (matcher.direct_database.host, matcher.direct_database.password) == (DIRECT_HOST, SECRET_VALUE)
    assert (matcher.database.host, matcher.database.password) == (DIRECT_HOST, SECRET_VALUE)
    service = MatcherService(matcher)  # refuses (MatcherUnavailable) without a direct connection
    try:
        assert service.database.engine.url.host == DIRECT_HOST
        assert service.database.engine.url.password == SECRET_VALUE
    finally:
        service.database.dispose()

    pooled = config_env(docs, one(docs, "Deployment", "bourse-api"))["BOURSE_DATABASE_URL"]
    control = _pod_settings(
        docs,
        "bourse-matcher",
        secrets,
        monkeypatch,
        BOURSE_DATABASE_URL=pooled,
        BOURSE_DATABASE_TRANSACTION_POOLING="true",
        BOURSE_DATABASE_DIRECT_URL=None,
    )
    with pytest.raises(MatcherUnavailable, match="BOURSE_DATABASE_DIRECT_URL"):
        MatcherService(control)


def test_the_matcher_serves_its_metrics_on_the_port_its_settings_name() -> None:
    docs = rendered()
    matcher = one(docs, "Deployment", "bourse-matcher")
    env = config_env(docs, matcher)
    ports = {p["name"]: p["containerPort"] for p in container(matcher)["ports"]}
    assert ports == {"metrics": int(env["BOURSE_METRICS_PORT"])}
    config = next(c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("bourse-config"))["data"]
    assert ports["metrics"] not in {
        int(config[k]) for k in ("BOURSE_METRICS_PORT", "BOURSE_WORKER_METRICS_PORT", "BOURSE_SCHEDULER_METRICS_PORT")
    }


def test_only_the_api_names_a_multiprocess_metrics_folder(tmp_path: Path) -> None:
    """prometheus-client switches to multiprocess mode whenever PROMETHEUS_MULTIPROC_DIR is
    set, and then fails on the first metric a module defines unless the folder exists.
    Only `bourse serve --workers` creates it, so only the API's pods may name it. The
    control: importing the matcher's metrics with a folder nobody created fails."""
    docs = rendered()
    for kind, name in ALL_WORKLOADS:
        env = config_env(docs, one(docs, kind, name))
        assert ("PROMETHEUS_MULTIPROC_DIR" in env) is (name == "bourse-api"), name
    code = "import bourse.trading.matcher, bourse.queue.metrics"
    missing = str(tmp_path / "not-created" / "metrics")
    failed = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PROMETHEUS_MULTIPROC_DIR=missing),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert failed.returncode != 0
    assert "FileNotFoundError" in failed.stderr
    env = clean_env()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    plain = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert plain.returncode == 0, plain.stderr


# --- configuration and secrets ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_bourse_name_in_the_manifests_is_a_real_setting(overlay: str) -> None:
    docs = rendered(overlay)
    names = {name for name in _env_names(docs) if name.startswith("BOURSE_")}
    assert names
    assert names <= SETTINGS, f"not settings: {sorted(names - SETTINGS)}"
    text = json.dumps(docs)
    mentioned = set(re.findall(r"\bBOURSE_[A-Z0-9_]+\b", text))
    assert mentioned <= SETTINGS, f"not settings: {sorted(mentioned - SETTINGS)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_data_outside_secret_objects(overlay: str) -> None:
    """Flaw 9 and the article's rule: secrets never in ConfigMaps, env or manifests."""
    docs = rendered(overlay)
    for config in find(docs, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert key not in SECRET_SETTINGS, f"{config['metadata']['name']}: {key}"
            assert not re.search(r"://[^/@:]+:[^/@]+@", str(value)), f"a password in a URL: {key}"
    for workload in _pod_workloads(docs):
        for spec in pod_spec(workload)["containers"]:
            assert all("secretRef" not in source for source in spec.get("envFrom", [])), "envFrom secretRef"
            for item in spec.get("env", []):
                assert item["name"] not in SECRET_SETTINGS
                assert "secretKeyRef" not in item.get("valueFrom", {})
    assert not find(docs, "Secret"), "a plain Secret would commit its values"


def test_the_sealed_secrets_hold_every_secret_setting_as_ciphertext() -> None:
    for overlay in ("production-sealed", "staging"):
        docs = rendered(overlay)
        sealed = one(docs, "SealedSecret", "bourse-secrets")["spec"]
        keys = set(sealed["encryptedData"])
        assert keys <= SECRET_SETTINGS
        assert {"BOURSE_JWT_SECRET", "BOURSE_TOTP_KEY", "BOURSE_PSP_API_KEY", "BOURSE_PSP_SECRET"} <= keys
        assert "BOURSE_DATABASE_PASSWORD" in keys
        api = one(docs, "Deployment", "bourse-api")
        volume = next(v for v in pod_spec(api)["volumes"] if v["name"] == "secrets")
        mount = next(m for m in container(api)["volumeMounts"] if m["name"] == "secrets")
        assert volume["secret"]["secretName"] == sealed["template"]["metadata"]["name"]
        assert "items" not in volume["secret"], "one file per key, named like the setting"
        assert config_env(docs, api)["BOURSE_SECRETS_DIRS"] == mount["mountPath"]


def test_vault_renders_key_value_lines_bourse_reads_itself() -> None:
    docs = rendered("production-vault")
    for kind, name in ALL_WORKLOADS:
        workload = one(docs, kind, name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/agent-inject"] == "true"
        template = annotations["vault.hashicorp.com/agent-inject-template-bourse.env"]
        keys = set(re.findall(r"^(BOURSE_[A-Z0-9_]+)=", template, re.MULTILINE))
        assert keys <= SECRET_SETTINGS
        assert {"BOURSE_JWT_SECRET", "BOURSE_DATABASE_PASSWORD"} <= keys
        assert config_env(docs, workload)["BOURSE_SECRETS_DIRS"] == "/vault/secrets"
        volumes = [v["name"] for v in pod_spec(workload)["volumes"]]
        assert "secrets" not in volumes, "no Secret volume beside Vault"
    assert not find(docs, "SealedSecret")


# --- resources and security ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_a_restricted_security_context(overlay: str) -> None:
    for workload in _pod_workloads(rendered(overlay)):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("automountServiceAccountToken") is False
        for spec in pod["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(spec["resources"][kind]), (workload["metadata"]["name"], kind)
            security = spec["securityContext"]
            assert security["runAsNonRoot"] is True
            assert (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_api_resources_are_the_articles_but_a_memory_request_the_hpa_can_use() -> None:
    api = container(one(rendered(), "Deployment", "bourse-api"))["resources"]
    assert api["requests"]["cpu"] == "250m"
    assert api["limits"] == {"cpu": "1000m", "memory": "512Mi"}
    assert api["requests"]["memory"] == "512Mi"
    worker = container(one(rendered(), "Deployment", "bourse-worker"))["resources"]
    assert worker == {"requests": {"cpu": "500m", "memory": "384Mi"}, "limits": {"cpu": "1500m", "memory": "512Mi"}}


# --- network policies ------------------------------------------------------------------

INGRESS_CONTROLLER = (
    {"kubernetes.io/metadata.name": "ingress-nginx"},
    {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
)
PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
POOLER = ({"kubernetes.io/metadata.name": "bourse-data"}, {"cnpg.io/poolerName": "bourse-db-pooler-rw"})
# The labels CloudNativePG puts on the primary's pod, which its bourse-db-rw Service selects.
PRIMARY = {"cnpg.io/cluster": "bourse-db", "cnpg.io/instanceRole": "primary", "cnpg.io/podRole": "instance"}
POOLED_HOST = "bourse-db-pooler-rw.bourse-data.svc"
DIRECT_HOST = "bourse-db-rw.bourse-data.svc"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, op = labels.get(expression["key"]), expression["operator"]
        if (op == "In" and value not in expression["values"]) or (op == "NotIn" and value in expression["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def _admits(peers: list[dict[str, Any]], namespace: dict[str, str], labels: dict[str, str]) -> bool:
    return any(
        "namespaceSelector" in peer
        and _selects(peer["namespaceSelector"], namespace)
        and _selects(peer.get("podSelector", {}), labels)
        for peer in peers
    )


def _policy_for(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, Any]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    found = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == "bourse"
        and p["spec"]["podSelector"]
        and _selects(p["spec"]["podSelector"], labels)
    ]
    assert len(found) == 1, (workload["metadata"]["name"], [p["metadata"]["name"] for p in found])
    return found[0]


def test_default_deny_then_each_workload_has_exactly_one_policy() -> None:
    docs = rendered()
    deny = one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for kind, name in ALL_WORKLOADS:
        _policy_for(docs, one(docs, kind, name))


def test_the_api_admits_only_the_ingress_controller_in_its_namespace_and_prometheus() -> None:
    """Flaw 4: a podSelector alone matches the app's own namespace; the controller lives in its own."""
    docs = rendered()
    policy = _policy_for(docs, one(docs, "Deployment", "bourse-api"))["spec"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {"http", "metrics"}
    assert _admits(by_port["http"], *INGRESS_CONTROLLER)
    assert not _admits(by_port["http"], {"kubernetes.io/metadata.name": "bourse"}, INGRESS_CONTROLLER[1])
    assert not _admits(by_port["http"], *PROMETHEUS)
    assert _admits(by_port["metrics"], *PROMETHEUS)
    assert all(
        "namespaceSelector" in peer and "podSelector" in peer for rule in policy["ingress"] for peer in rule["from"]
    )


@pytest.mark.parametrize("name", ["bourse-api", "bourse-worker", "bourse-scheduler"])
def test_egress_is_the_database_dns_on_udp_and_tcp_and_public_https_only(name: str) -> None:
    docs = rendered()
    policy = _policy_for(docs, one(docs, "Deployment", name))["spec"]
    rules = policy["egress"]
    dns = [r for r in rules if _admits(r["to"], *DNS)]
    assert len(dns) == 1
    assert {(p["port"], p["protocol"]) for p in dns[0]["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert any(_admits(r["to"], *POOLER) and r["ports"] == [{"port": 5432, "protocol": "TCP"}] for r in rules)
    https = [r for r in rules if r["ports"] == [{"port": 443, "protocol": "TCP"}]]
    if name == "bourse-scheduler":
        assert not https
        return
    assert len(https) == 1
    blocks = [peer["ipBlock"] for peer in https[0]["to"]]

    def allowed(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(
            ip in ipaddress.ip_network(b["cidr"])
            and not any(ip in ipaddress.ip_network(e) for e in b.get("except", []))
            for b in blocks
            if ipaddress.ip_network(b["cidr"]).version == ip.version
        )

    for private in (
        "10.1.2.3",
        "172.20.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "127.0.0.1",
        "fd00:ec2::254",
        "fe80::1",
        "::1",
    ):
        assert not allowed(private), private
    for public in ("1.1.1.1", "54.187.174.169", "2606:4700:4700::1111"):
        assert allowed(public), public


def _postgres_hosts(env: dict[str, str]) -> set[str]:
    """The hosts of the PostgreSQL URLs a pod's settings name (the main and the direct one)."""
    return {
        make_url(env[name]).host or ""
        for name in ("BOURSE_DATABASE_URL", "BOURSE_DATABASE_DIRECT_URL")
        if env.get(name, "").startswith("postgresql")
    }


def test_the_matcher_admits_only_prometheus_and_reaches_only_the_primary_redis_and_dns() -> None:
    """The matcher serves nothing but metrics, and needs PostgreSQL directly (never the
    pooler), Redis (market data for the API's relays) and DNS: no internet, no pooler."""
    docs = rendered()
    policy = _policy_for(docs, one(docs, "Deployment", "bourse-matcher"))["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert _admits(ingress["from"], *PROMETHEUS)
    assert not _admits(ingress["from"], *INGRESS_CONTROLLER)
    assert not _admits(ingress["from"], {"kubernetes.io/metadata.name": "bourse"}, PROMETHEUS[1])
    by_port = {tuple((p["port"], p["protocol"]) for p in rule["ports"]): rule["to"] for rule in policy["egress"]}
    assert set(by_port) == {((5432, "TCP"),), ((6379, "TCP"),), ((53, "UDP"), (53, "TCP"))}
    data_ns = {"kubernetes.io/metadata.name": "bourse-data"}
    assert _admits(by_port[((5432, "TCP"),)], data_ns, PRIMARY)
    assert not _admits(by_port[((5432, "TCP"),)], *POOLER)
    assert not _admits(by_port[((5432, "TCP"),)], data_ns, {**PRIMARY, "cnpg.io/instanceRole": "replica"})
    assert _admits(by_port[((53, "UDP"), (53, "TCP"))], *DNS)
    api = _policy_for(docs, one(docs, "Deployment", "bourse-api"))["spec"]
    redis = [rule["to"] for rule in api["egress"] if rule["ports"] == [{"port": 6379, "protocol": "TCP"}]]
    assert by_port[((6379, "TCP"),)] == redis[0], "the same Redis as the API's relays"
    assert all("except" not in peer.get("ipBlock", {}) for peer in redis[0])
    assert all(ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private for peer in redis[0])


def test_the_data_namespace_admits_the_pods_that_need_it() -> None:
    """Each pod reaches exactly the PostgreSQL services its URLs name: the pooler for the
    API, workers and scheduler; the primary itself for the migration, the matcher and the
    API's direct connection; and the app's egress and the data side's ingress agree."""
    docs = rendered()
    app_ns = {"kubernetes.io/metadata.name": "bourse"}
    data_ns = {"kubernetes.io/metadata.name": "bourse-data"}
    pooler = one(docs, "NetworkPolicy", "bourse-db-pooler")["spec"]
    instances = one(docs, "NetworkPolicy", "bourse-db-instances")["spec"]
    pooler_peers = [peer for rule in pooler["ingress"] if rule["ports"][0]["port"] == 5432 for peer in rule["from"]]
    instance_peers = [
        peer for rule in instances["ingress"] if rule["ports"][0]["port"] == 5432 for peer in rule["from"]
    ]
    expected = {
        "bourse-api": {POOLED_HOST, DIRECT_HOST},
        "bourse-matcher": {DIRECT_HOST},
        "bourse-stream": {POOLED_HOST},
        "bourse-worker": {POOLED_HOST},
        "bourse-scheduler": {POOLED_HOST},
        "bourse-migrate": {DIRECT_HOST},
    }
    for kind, name in ALL_WORKLOADS:
        workload = one(docs, kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        hosts = _postgres_hosts(config_env(docs, workload))
        assert hosts == expected[name], (name, hosts)
        assert _admits(pooler_peers, app_ns, labels) is (POOLED_HOST in hosts), name
        assert _admits(instance_peers, app_ns, labels) is (DIRECT_HOST in hosts), name
        egress = [r for r in _policy_for(docs, workload)["spec"]["egress"] if _admits(r["to"], data_ns, PRIMARY)]
        assert (egress != []) is (DIRECT_HOST in hosts), name
        assert all(r["ports"] == [{"port": 5432, "protocol": "TCP"}] for r in egress), name
    assert _selects(pooler["podSelector"], POOLER[1])
    assert _selects(instances["podSelector"], PRIMARY)


# --- observability ---------------------------------------------------------------------


def test_a_pod_monitor_for_every_process_that_exports_metrics() -> None:
    docs = rendered()
    for _, name in WORKLOADS:
        workload = one(docs, "Deployment", name)
        monitor = one(docs, "PodMonitor", name)["spec"]
        assert _selects(monitor["selector"], workload["spec"]["template"]["metadata"]["labels"])
        ports = {p["name"] for p in container(workload)["ports"]}
        assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports


def test_the_alerts_cover_the_promised_conditions_on_metrics_bourse_exports() -> None:
    rules = [r for g in one(rendered(), "PrometheusRule", "bourse")["spec"]["groups"] for r in g["rules"]]
    exprs = {r["alert"]: r["expr"] for r in rules}
    source = "\n".join(p.read_text() for p in (DEPLOY.parents[1] / "src" / "bourse").rglob("*.py"))
    for expr in exprs.values():
        for metric in set(re.findall(r"\b(bourse_[a-z_]+)", expr)):
            base = re.sub(r"_(bucket|total|count|sum)$", "", metric)
            assert f'"{base}' in source or f'"{metric}"' in source, f"{metric} is not a metric Bourse exports"
    joined = "\n".join(exprs.values())
    for promised in (
        "bourse_queue_oldest_job_age_seconds",
        'status="failed"',
        "bourse_ledger_discrepancies",
        "bourse_reconciliation_mismatches",
        'status=~"5..',
        "histogram_quantile(0.99",
        "bourse_matcher_leader",
        "bourse_matcher_oldest_pending_seconds",
        "bourse_matcher_commands_isolated_total",
    ):
        assert promised in joined, promised


def _promtool_rules(path: Path, *, annotations: bool) -> None:
    groups = one(rendered(), "PrometheusRule", "bourse")["spec"]["groups"]
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups
        ]
    path.write_text(yaml.safe_dump({"groups": groups}))


# Series as the matcher pods export them, with the labels their PodMonitor adds.
MATCHER_A = 'namespace="bourse", pod="bourse-matcher-a"'
MATCHER_B = 'namespace="bourse", pod="bourse-matcher-b"'
MATCHER_ALERT_TESTS: list[dict[str, Any]] = [
    {
        "name": "the leader steps down and nobody takes over",
        "input_series": [{"series": f'bourse_matcher_leader{{{MATCHER_A}, shard="0"}}', "values": "1x8 0x20"}],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "BourseMatcherNoLeader", "exp_alerts": []},
            {"eval_time": "2m30s", "alertname": "BourseMatcherNoLeader", "exp_alerts": []},
            {
                "eval_time": "4m",
                "alertname": "BourseMatcherNoLeader",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "shard": "0"}}],
            },
        ],
    },
    {
        "name": "a standby takes over: no alert",
        "input_series": [
            {"series": f'bourse_matcher_leader{{{MATCHER_A}, shard="0"}}', "values": "1x8 0x20"},
            {"series": f'bourse_matcher_leader{{{MATCHER_B}, shard="0"}}', "values": "_x8 1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": t, "alertname": "BourseMatcherNoLeader", "exp_alerts": []} for t in ("1m", "3m", "6m")
        ],
    },
    {
        "name": "no matcher runs at all",
        "input_series": [{"series": 'up{namespace="bourse", pod="bourse-api-a"}', "values": "1x20"}],
        "alert_rule_test": [
            {"eval_time": "30s", "alertname": "BourseMatcherNoLeader", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "BourseMatcherNoLeader",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": "bourse"}}],
            },
        ],
    },
    {
        # b led before and stepped down: its last look (60 s) is stale and must not count.
        "name": "commands wait on the leader; a former leader's stale age is ignored",
        "input_series": [
            {"series": f'bourse_matcher_leader{{{MATCHER_A}, shard="0"}}', "values": "1x20"},
            {"series": f'bourse_matcher_leader{{{MATCHER_B}, shard="0"}}', "values": "0x20"},
            {
                "series": f'bourse_matcher_oldest_pending_seconds{{{MATCHER_A}, instrument="BTC-EUR"}}',
                "values": "0x4 30x16",
            },
            {
                "series": f'bourse_matcher_oldest_pending_seconds{{{MATCHER_A}, instrument="ETH-EUR"}}',
                "values": "1x20",
            },
            {
                "series": f'bourse_matcher_oldest_pending_seconds{{{MATCHER_B}, instrument="SOL-EUR"}}',
                "values": "60x20",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "BourseMatcherCommandsWaiting", "exp_alerts": []},
            {
                "eval_time": "4m",
                "alertname": "BourseMatcherCommandsWaiting",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "instrument": "BTC-EUR"}}],
            },
        ],
    },
    {
        "name": "a command isolated",
        "input_series": [
            {"series": f"bourse_matcher_commands_isolated_total{{{MATCHER_A}}}", "values": "0x4 1x16"},
        ],
        "alert_rule_test": [
            {"eval_time": "30s", "alertname": "BourseMatcherCommandsIsolated", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "BourseMatcherCommandsIsolated",
                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
            },
        ],
    },
]


def test_the_matcher_alerts_fire_when_they_should_and_not_on_a_handover(tmp_path: Path) -> None:
    """promtool (Debian's prometheus package) checks the rules, templates included, and
    runs them over series shaped like the matcher's: no leader after a step-down, or with
    no matcher at all; none during a handover; commands waiting on the current leader
    (not on a stale former leader); a command isolated."""
    promtool = require_tool("promtool")
    _promtool_rules(tmp_path / "rules.yaml", annotations=True)
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Alerts compare with their annotations too; the expressions, `for` and labels are what is tested here.
    _promtool_rules(tmp_path / "bare.yaml", annotations=False)
    cases = [{"interval": "15s", **{k: v for k, v in case.items() if k != "name"}} for case in MATCHER_ALERT_TESTS]
    tests = {"rule_files": ["bare.yaml"], "evaluation_interval": "15s", "tests": cases}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    ran = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_grafana_dashboard_is_json_over_bourse_metrics() -> None:
    dashboard = json.loads(one(rendered(), "ConfigMap", "bourse-grafana-dashboard")["data"]["bourse-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("bourse_http_requests_in_flight" in e for e in exprs)
    assert any("bourse_queue_depth" in e for e in exprs)
