"""The rules the delivery files (Dockerfile, compose.yaml, nginx and Redis config) must keep.

Each rule reads the parsed files and returns the problems it finds, as sentences.
``tests/deploy`` runs them on the real files (no problem allowed) and on copies
broken the way the source article's examples are broken (each rule must catch its
flaw), so a rule that cannot fail is caught too. They hold the files against the
code: setting names, the queue order, the worker's timeout, the body-size limit.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from bourse.queue.worker import DEFAULT_QUEUES
from bourse.settings import Settings, env_name, is_secret_field

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = frozenset(env_name(name) for name in Settings.model_fields)
SECRET_SETTINGS = frozenset(env_name(name) for name in Settings.model_fields if is_secret_field(name))
BOURSE_SERVICES = ("migrate", "api", "stream", "worker", "scheduler", "psp-sim")
WEAK_PASSWORDS = frozenset({"secret", "password", "changeme", "change-me", "test", "example", "postgres", "redis"})
WORKER_FLAGS = {"--tries": "3", "--timeout": "120", "--memory": "384"}


def load_yaml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def parse_duration(value: str | int) -> float:
    """Compose durations: ``1m30s``, ``150s``, ``2m``, or a bare number of seconds."""
    if isinstance(value, int):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    factor = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * factor[u] for n, u in parts)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def flags_of(argv: list[str]) -> dict[str, str]:
    """``--name value`` and ``--name=value`` pairs of a command line."""
    found: dict[str, str] = {}
    for i, word in enumerate(argv):
        if word.startswith("--") and "=" in word:
            name, _, value = word.partition("=")
            found[name] = value
        elif word.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            found[word] = argv[i + 1]
    return found


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- compose.yaml ------------------------------------------------------------------------


def published_port_problems(compose: dict[str, Any]) -> list[str]:
    """Flaw 7: every published port binds 127.0.0.1, never every interface."""
    problems = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                if port.get("host_ip") != "127.0.0.1":
                    problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
            elif not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port!r} is published on every interface")
    return problems


def secret_problems(compose: dict[str, Any]) -> list[str]:
    """Flaw 7 and the secrets rule: no secret in the environment, no weak password, files read by Bourse."""
    problems = []
    for name, service in compose["services"].items():
        env = environment_of(service)
        for key, value in env.items():
            if key in SECRET_SETTINGS:
                problems.append(f"{name}: {key} is an environment variable; secrets are compose secrets")
            secretive = re.search(r"PASSWORD|SECRET|API_KEY|TOKEN", key) and not key.endswith("_FILE")
            if secretive and key != "BOURSE_SECRETS_DIRS":
                problems.append(f"{name}: {key} holds a secret in the environment")
                if value.strip().lower() in WEAK_PASSWORDS:
                    problems.append(f"{name}: {key} is the weak password {value!r}")
        problems.extend(
            f"{name}: a password on the command line ({word!r})"
            for word in command_of(service)
            if word in {"-a", "--pass", "--password"} or "requirepass" in word
        )
        if name in BOURSE_SERVICES:
            if env.get("BOURSE_SECRETS_DIRS") != "/run/secrets":
                problems.append(f"{name}: BOURSE_SECRETS_DIRS is not /run/secrets")
            targets = {s["target"] for s in service.get("secrets", []) if isinstance(s, dict)}
            problems.extend(
                f"{name}: the secret target {target} is not a secret setting"
                for target in sorted(targets - SECRET_SETTINGS)
            )
    for secret, spec in compose.get("secrets", {}).items():
        if "file" not in spec or ".secrets" not in spec["file"]:
            problems.append(f"secret {secret} is not a file from make compose-secrets")
    return problems


def setting_name_problems(compose: dict[str, Any]) -> list[str]:
    """Every BOURSE_ variable given to a container is a real setting (unknown ones stop Bourse)."""
    return [
        f"{name}: {key} is not a Bourse setting"
        for name, service in compose["services"].items()
        for key in environment_of(service)
        if key.startswith("BOURSE_") and key not in SETTINGS
    ]


def redis_problems(compose: dict[str, Any], redis_conf: str) -> list[str]:
    """Flaw 1: queued jobs are never evicted, and survive a restart."""
    directives: dict[str, str] = {}
    for line in redis_conf.splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            directives[words[0].lower()] = words[1].strip() if len(words) > 1 else ""
    argv = command_of(compose["services"]["redis"])
    for i, word in enumerate(argv):
        if word.startswith("--") and i + 1 < len(argv):
            directives[word[2:].lower()] = argv[i + 1]
    problems = []
    if directives.get("maxmemory-policy") != "noeviction":
        problems.append(f"redis: maxmemory-policy is {directives.get('maxmemory-policy')!r}, not noeviction")
    if directives.get("appendonly") != "yes":
        problems.append("redis: append-only persistence is off")
    if directives.get("appendfsync", "everysec") not in {"always", "everysec"}:
        problems.append(f"redis: appendfsync {directives['appendfsync']!r} may lose acknowledged jobs")
    if "requirepass" in directives:
        problems.append("redis: the password is written in the configuration, not read from a secret")
    if not any(key == "include" and "/run/secrets/" in value for key, value in directives.items()):
        problems.append("redis: the password is not read from a secret file")
    return problems


def worker_problems(compose: dict[str, Any]) -> list[str]:
    """Flaw 2 and the article's worker: queue priority, flags, and a grace period longer than a job."""
    worker = compose["services"]["worker"]
    argv = command_of(worker)
    flags = flags_of(argv)
    problems = []
    if argv[:1] != ["worker"]:
        problems.append(f"worker: the command is {argv}, not `bourse worker`")
    if flags.get("--queue") != ",".join(DEFAULT_QUEUES):
        problems.append(f"worker: --queue {flags.get('--queue')!r}, not {','.join(DEFAULT_QUEUES)}")
    for flag, value in WORKER_FLAGS.items():
        if flags.get(flag) != value:
            problems.append(f"worker: {flag} is {flags.get(flag)!r}, not {value}")
    timeout = float(flags.get("--timeout", "60"))
    grace = parse_duration(worker.get("stop_grace_period", "10s"))
    if grace <= timeout:
        problems.append(f"worker: stop_grace_period {grace:.0f}s is not longer than the job timeout {timeout:.0f}s")
    retry_after = Settings.model_fields["queue_retry_after_seconds"].default
    if timeout >= retry_after:
        problems.append(f"worker: --timeout {timeout:.0f}s is not shorter than BOURSE_QUEUE_RETRY_AFTER_SECONDS")
    return problems


def process_problems(compose: dict[str, Any]) -> list[str]:
    """Flaw 7: real processes with healthchecks, never a shell loop; dependencies on health."""
    services = compose["services"]
    problems = []
    for name, service in services.items():
        text = " ".join(command_of(service))
        if re.search(r"while\s+true|sleep\s+\d", text):
            problems.append(f"{name}: a shell loop ({text!r}) instead of a real process")
    if command_of(services["scheduler"]) != ["scheduler"]:
        problems.append(f"scheduler: {command_of(services['scheduler'])} is not `bourse scheduler`")
    expected_checks = {
        "api": ["bourse", "healthcheck"],
        "stream": ["bourse", "healthcheck", "--ready"],
        "worker": ["bourse", "healthcheck", "--worker"],
        "scheduler": ["bourse", "healthcheck", "--scheduler"],
        "postgres": ["pg_isready"],
        "redis": ["redis-cli"],
        "psp-sim": ["/healthz"],
        "nginx": ["/nginx-health"],
    }
    for name, words in expected_checks.items():
        test = services[name].get("healthcheck", {}).get("test", [])
        text = test if isinstance(test, str) else " ".join(test)
        if not all(word in text for word in words):
            problems.append(f"{name}: its healthcheck {test!r} does not run {' '.join(words)}")
    healthy = {"postgres", "redis"}
    for name in ("api", "stream", "worker", "scheduler"):
        depends = services[name].get("depends_on", {})
        problems.extend(
            f"{name}: does not wait for {dependency} to be healthy"
            for dependency in sorted(healthy)
            if depends.get(dependency, {}).get("condition") != "service_healthy"
        )
        if depends.get("migrate", {}).get("condition") != "service_completed_successfully":
            problems.append(f"{name}: does not wait for the migrations")
    if services["migrate"].get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
        problems.append("migrate: does not wait for postgres to be healthy")
    problems.extend(
        f"nginx: does not wait for the {upstream} to be healthy"
        for upstream in ("api", "stream")
        if services["nginx"].get("depends_on", {}).get(upstream, {}).get("condition") != "service_healthy"
    )
    if command_of(services["migrate"]) != ["migrate"] or services["migrate"].get("restart") != "no":
        problems.append("migrate: not a one-shot `bourse migrate`")
    return problems


def runtime_problems(compose: dict[str, Any]) -> list[str]:
    """Bourse's containers: read-only root, /tmp writable, no mount of the source tree (flaw 7)."""
    problems = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if source in {".", "./"} or source.startswith(("./src", "./migrations", "./tests")):
                problems.append(f"{name}: mounts the source tree ({volume!r}); that belongs in compose.dev.yaml")
        if name in BOURSE_SERVICES:
            if service.get("read_only") is not True:
                problems.append(f"{name}: its root filesystem is writable")
            if "/tmp" not in service.get("tmpfs", []):
                problems.append(f"{name}: /tmp is not a tmpfs")
            if "user" in service and service["user"] != "1000:1000":
                problems.append(f"{name}: runs as {service['user']}")
    return problems


def proxy_problems(compose: dict[str, Any], nginx_conf: str) -> list[str]:
    """nginx: WebSocket upgrade, the body limit, X-Request-ID, the client address trusted from nginx only."""
    problems = []
    services = compose["services"]
    nginx_address = (services["nginx"].get("networks") or {}).get("edge", {}).get("ipv4_address")
    trusted = environment_of(services["api"]).get("BOURSE_FORWARDED_ALLOW_IPS")
    if not nginx_address or trusted != nginx_address:
        problems.append(f"api: BOURSE_FORWARDED_ALLOW_IPS is {trusted!r}, not nginx's address {nginx_address!r}")
    problems.extend(
        f"{name}: trusts forwarded addresses"
        for name, service in services.items()
        if name != "api" and "BOURSE_FORWARDED_ALLOW_IPS" in environment_of(service)
    )
    limit = Settings.model_fields["max_body_bytes"].default
    size = re.search(r"client_max_body_size\s+(\d+)([km]?);", nginx_conf)
    if size is None or int(size.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2)] != limit:
        problems.append(f"nginx: client_max_body_size is not BOURSE_MAX_BODY_BYTES ({limit} bytes)")
    headers = proxied_headers(nginx_conf)
    if "/api/v1/ws" not in headers or headers["/api/v1/ws"].get("Upgrade") != "$http_upgrade":
        problems.append("nginx: /api/v1/ws is not upgraded to a WebSocket")
    # BOURSE_STREAM=external: the WebSocket is the stream service's, everything else the API's.
    stream = environment_of(services["api"]).get("BOURSE_STREAM", "in-process")
    wanted = {"/api/v1/ws": "stream" if stream == "external" else "api", "/": "api"}
    for location, service in wanted.items():
        if proxied_services(nginx_conf).get(location) != [f"{service}:8000"]:
            problems.append(f"nginx: {location} is not proxied to the {service} service")
    for location, sent in headers.items():
        if sent.get("X-Forwarded-For") != "$remote_addr":
            problems.append(f"nginx: {location}: X-Forwarded-For is not replaced by the address nginx saw")
        if not sent.get("X-Request-ID", "").startswith("$"):
            problems.append(f"nginx: {location}: X-Request-ID is not passed to the API")
    return problems


def proxied_headers(nginx_conf: str) -> dict[str, dict[str, str]]:
    """Per proxying location, the headers nginx sends upstream.

    nginx's rule: a location inherits the server block's proxy_set_header lines
    only if it has none of its own.
    """
    server_level = re.sub(r"location[^{]*\{[^}]*\}", "", nginx_conf)
    inherited = dict(re.findall(r"proxy_set_header\s+(\S+)\s+([^;]+);", server_level))
    found = {}
    for path, body in re.findall(r"location\s+(?:=\s+)?(\S+)\s*\{([^}]*)\}", nginx_conf):
        if "proxy_pass" not in body:
            continue
        own = dict(re.findall(r"proxy_set_header\s+(\S+)\s+([^;]+);", body))
        found[path] = own or inherited
    return found


def proxied_services(nginx_conf: str) -> dict[str, list[str]]:
    """Per proxying location, the servers of the upstream it passes to."""
    upstreams = {
        name: re.findall(r"server\s+([^;\s]+)", body)
        for name, body in re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", nginx_conf)
    }
    return {
        path: upstreams.get(target, [target])
        for path, body in re.findall(r"location\s+(?:=\s+)?(\S+)\s*\{([^}]*)\}", nginx_conf)
        for target in re.findall(r"proxy_pass\s+https?://([^;/\s]+)", body)
    }


def compose_problems(compose: dict[str, Any], redis_conf: str, nginx_conf: str) -> list[str]:
    return [
        *published_port_problems(compose),
        *secret_problems(compose),
        *setting_name_problems(compose),
        *redis_problems(compose, redis_conf),
        *worker_problems(compose),
        *process_problems(compose),
        *runtime_problems(compose),
        *proxy_problems(compose, nginx_conf),
    ]


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        found.append(Instruction(start, keyword.upper(), args.strip()))
        pending = ""
    return found


def stages(text: str) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile_problems(text: str) -> list[str]:  # noqa: PLR0912 - one branch per rule, each with its message
    """Flaw 8 and the issue's image rules."""
    problems = []
    if re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE):
        problems.append("a `# syntax=` line (CI's Docker 20.10 builds with its own frontend)")
    everything = instructions(text)
    base_args = {}
    for instruction in everything:
        if instruction.keyword == "ARG" and re.match(r"[A-Z_]+_IMAGE=", instruction.args):
            name, _, default = instruction.args.partition("=")
            base_args[name] = default
            if not re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", default) or ":latest" in default:
                problems.append(f"ARG {name}: {default!r} is not a fixed tag (or tag and digest)")
    all_stages = stages(text)
    names = set()
    for stage in all_stages:
        source, _, alias = stage[0].args.partition(" AS ")
        reference = re.fullmatch(r"\$\{?([A-Z_]+_IMAGE)\}?", source.strip())
        if source.strip() not in names and (reference is None or reference.group(1) not in base_args):
            problems.append(f"line {stage[0].line}: FROM {source} is not a base image build argument or a stage")
        names.add(alias.strip())
    for instruction in everything:
        if instruction.keyword == "RUN" and re.search(r"\bchown\b", instruction.args):
            problems.append(f"line {instruction.line}: chown in a RUN layer duplicates the files; use COPY --chown")
        if instruction.keyword == "ENV" and re.search(r"PIP_CERT|SSL_CERT_FILE|NODE_EXTRA_CA_CERTS", instruction.args):
            problems.append(f"line {instruction.line}: a CA bundle setting as ENV would reach the runtime image")
    runtime = all_stages[-1]
    for instruction in runtime:
        if instruction.keyword in {"COPY", "ADD"}:
            if "--from=" not in instruction.args:
                problems.append(f"line {instruction.line}: {instruction.keyword} into the runtime without --from=")
            elif "/opt/bourse" in instruction.args and "--chown=1000:1000" not in instruction.args:
                problems.append(f"line {instruction.line}: Bourse's files are copied without --chown=1000:1000")
        if instruction.keyword == "ARG" and re.match(
            r"(PIP_CERT|SSL_CERT_FILE|NODE_EXTRA_CA_CERTS)\b", instruction.args
        ):
            problems.append(f"line {instruction.line}: {instruction.args} is declared in the runtime stage")
        if instruction.keyword == "ENV":
            problems.extend(
                f"line {instruction.line}: {key} is not a Bourse setting"
                for key in re.findall(r"\b(BOURSE_[A-Z0-9_]+)=", instruction.args)
                if key not in SETTINGS
            )
    final = {i.keyword: i.args for i in runtime}
    if final.get("USER") != "1000:1000":
        problems.append(f"the runtime runs as {final.get('USER')!r}, not 1000:1000")
    if final.get("ENTRYPOINT") != '["bourse"]':
        problems.append(f"the entrypoint is {final.get('ENTRYPOINT')!r}, not bourse")
    if final.get("CMD") != '["serve", "--host", "0.0.0.0"]':
        problems.append(f"the default command {final.get('CMD')!r} does not serve the API on 0.0.0.0")
    if "bourse" not in final.get("HEALTHCHECK", "") or "healthcheck" not in final.get("HEALTHCHECK", ""):
        problems.append("the HEALTHCHECK does not run `bourse healthcheck`")
    labels = " ".join(i.args for i in runtime if i.keyword == "LABEL")
    problems.extend(
        f"no org.opencontainers.image.{label} label"
        for label in ("version", "revision", "source")
        if f"org.opencontainers.image.{label}=" not in labels
    )
    return problems
