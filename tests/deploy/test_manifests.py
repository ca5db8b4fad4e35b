"""Semantic tests over the rendered manifests (``kubectl kustomize`` of each overlay),
held against the code and against each other. Each names the promise of the article
or the flaw of ``shared/guide/seed-review.md`` it guards.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bourse.app import create_app
from bourse.queue.registry import load_jobs
from bourse.queue.worker import DEFAULT_QUEUES
from bourse.server import STOP_MARGIN_SECONDS
from bourse.settings import Settings, env_name, is_secret_field
from tests.support.k8s import DEPLOY, OVERLAYS, config_env, container, find, flag, one, pod_spec, rendered
from tests.support.services import make_settings

SETTINGS = frozenset(env_name(name) for name in Settings.model_fields)
SECRET_SETTINGS = frozenset(env_name(name) for name in Settings.model_fields if is_secret_field(name))
WORKLOADS = (("Deployment", "bourse-api"), ("Deployment", "bourse-worker"), ("Deployment", "bourse-scheduler"))
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
        ("NetworkPolicy", "default-deny"),
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
    import yaml  # type: ignore[import-untyped]  # noqa: PLC0415 - the adapter's config is YAML inside the ConfigMap

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


def test_the_data_namespace_admits_the_pods_that_need_it() -> None:
    docs = rendered()
    app_ns = {"kubernetes.io/metadata.name": "bourse"}
    pooler = one(docs, "NetworkPolicy", "bourse-db-pooler")["spec"]
    instances = one(docs, "NetworkPolicy", "bourse-db-instances")["spec"]
    pooler_peers = [peer for rule in pooler["ingress"] if rule["ports"][0]["port"] == 5432 for peer in rule["from"]]
    instance_peers = [
        peer for rule in instances["ingress"] if rule["ports"][0]["port"] == 5432 for peer in rule["from"]
    ]
    for kind, name in ALL_WORKLOADS:
        labels = one(docs, kind, name)["spec"]["template"]["metadata"]["labels"]
        through_pooler = name != "bourse-migrate"
        assert _admits(pooler_peers, app_ns, labels) is through_pooler, name
        assert _admits(instance_peers, app_ns, labels) is not through_pooler, name
    assert _selects(pooler["podSelector"], POOLER[1])


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
    ):
        assert promised in joined, promised


def test_the_grafana_dashboard_is_json_over_bourse_metrics() -> None:
    dashboard = json.loads(one(rendered(), "ConfigMap", "bourse-grafana-dashboard")["data"]["bourse-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("bourse_http_requests_in_flight" in e for e in exprs)
    assert any("bourse_queue_depth" in e for e in exprs)
