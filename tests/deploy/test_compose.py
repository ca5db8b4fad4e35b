"""compose.yaml, nginx and Redis configuration held against the code and the source article's flaws.

Each rule runs on the real files (no problem) and on a copy broken the way the
article's example is (the rule must name the problem): a rule that cannot fail
would pass both. The running stack is checked by ``make compose-e2e``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.delivery import (
    BOURSE_SERVICES,
    ROOT,
    compose_problems,
    load_yaml,
    parse_duration,
    proxy_problems,
    published_port_problems,
    redis_problems,
    runtime_problems,
    secret_problems,
    setting_name_problems,
    worker_problems,
)

REDIS_CONF = (ROOT / "deploy/redis/redis.conf").read_text()
NGINX_CONF = (ROOT / "deploy/nginx/bourse.conf").read_text()


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_yaml("compose.yaml")


def test_the_compose_file_keeps_every_rule(compose: dict[str, Any]) -> None:
    assert compose_problems(compose, REDIS_CONF, NGINX_CONF) == []


def test_every_service_the_issue_names_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*BOURSE_SERVICES, "nginx", "postgres", "redis"}
    assert compose["services"]["nginx"]["ports"] == ["127.0.0.1:${HTTP_PORT:-8080}:8080"]
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def broken(compose: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(compose)
    change(copied["services"])
    return copied


# Flaw 7: ports on every interface, the password "secret", a shell-loop scheduler, the source tree mounted.


@pytest.mark.parametrize("port", ["5432:5432", "0.0.0.0:6379:6379", "8080:80", {"target": 80, "published": 8080}])
def test_a_port_on_every_interface_is_caught(compose: dict[str, Any], port: object) -> None:
    copied = broken(compose, lambda s: s["postgres"].setdefault("ports", []).append(port))
    assert any("postgres: port" in p for p in published_port_problems(copied))


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("postgres", "POSTGRES_PASSWORD", "secret"),
        ("api", "BOURSE_JWT_SECRET", "a-perfectly-long-jwt-secret-in-the-environment"),
        ("worker", "BOURSE_DATABASE_PASSWORD", "x7Gq0pLm"),
        ("redis", "REDIS_PASSWORD", "secret"),
    ],
)
def test_a_secret_in_the_environment_is_caught(compose: dict[str, Any], service: str, key: str, value: str) -> None:
    copied = broken(compose, lambda s: s[service].setdefault("environment", {}).update({key: value}))
    assert any(f"{service}: {key}" in p for p in secret_problems(copied))


def test_the_articles_redis_password_on_the_command_line_is_caught(compose: dict[str, Any]) -> None:
    command = "redis-server --requirepass secret --maxmemory 256mb --maxmemory-policy allkeys-lfu"
    copied = broken(compose, lambda s: s["redis"].update(command=command))
    assert any("password on the command line" in p for p in secret_problems(copied))


def test_the_articles_scheduler_loop_is_caught(compose: dict[str, Any]) -> None:
    loop = 'sh -c "while true; do bourse schedule run; sleep 60; done"'
    copied = broken(compose, lambda s: s["scheduler"].update(command=loop))
    problems = compose_problems(copied, REDIS_CONF, NGINX_CONF)
    assert any("scheduler: a shell loop" in p for p in problems)
    assert any("is not `bourse scheduler`" in p for p in problems)


@pytest.mark.parametrize("volume", [".:/var/www/html", "./src:/opt/bourse/src", {"type": "bind", "source": "."}])
def test_the_source_tree_mounted_in_the_main_file_is_caught(compose: dict[str, Any], volume: object) -> None:
    copied = broken(compose, lambda s: s["api"].setdefault("volumes", []).append(volume))
    assert any("api: mounts the source tree" in p for p in runtime_problems(copied))


def test_development_conveniences_live_in_the_dev_file() -> None:
    dev = load_yaml("compose.dev.yaml")
    assert any("./src:" in v for v in dev["services"]["api"]["volumes"])
    assert dev["services"]["postgres"]["ports"] == ["127.0.0.1:${POSTGRES_HOST_PORT:-5432}:5432"]
    assert published_port_problems(dev) == []


def test_a_writable_root_filesystem_is_caught(compose: dict[str, Any]) -> None:
    copied = broken(compose, lambda s: s["worker"].update(read_only=False))
    assert "worker: its root filesystem is writable" in runtime_problems(copied)


# Flaw 1: Redis may evict queued jobs, or lose them on a restart.


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        (REDIS_CONF.replace("maxmemory-policy noeviction", "maxmemory-policy allkeys-lfu"), "maxmemory-policy"),
        (REDIS_CONF.replace("maxmemory-policy noeviction\n", ""), "maxmemory-policy"),
        (REDIS_CONF.replace("appendonly yes", "appendonly no"), "append-only persistence is off"),
        (REDIS_CONF.replace("appendfsync always", "appendfsync no"), "appendfsync"),
        (REDIS_CONF.replace("include /run/secrets/redis_auth", "requirepass secret"), "written in the configuration"),
    ],
)
def test_a_redis_that_may_lose_jobs_is_caught(compose: dict[str, Any], conf: str, expected: str) -> None:
    assert conf != REDIS_CONF
    assert any(expected in p for p in redis_problems(compose, conf))


def test_an_eviction_policy_on_the_command_line_is_caught(compose: dict[str, Any]) -> None:
    copied = broken(compose, lambda s: s["redis"]["command"].extend(["--maxmemory-policy", "allkeys-lfu"]))
    assert any("allkeys-lfu" in p for p in redis_problems(copied, REDIS_CONF))


# Flaw 2: the worker killed mid-job; and the article's worker, held against the code.


def test_the_worker_grace_period_is_longer_than_its_job_timeout(compose: dict[str, Any]) -> None:
    assert parse_duration(compose["services"]["worker"]["stop_grace_period"]) > 120


@pytest.mark.parametrize("grace", ["30s", "120s", "2m", None])
def test_a_grace_period_shorter_than_a_job_is_caught(compose: dict[str, Any], grace: str | None) -> None:
    def change(services: dict[str, Any]) -> None:
        if grace is None:
            del services["worker"]["stop_grace_period"]  # Docker's default: 10 s
        else:
            services["worker"]["stop_grace_period"] = grace

    assert any("stop_grace_period" in p for p in worker_problems(broken(compose, change)))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("deposits,withdrawals,commissions,default", "default,deposits,withdrawals,commissions", "--queue"),
        ("120", "90", "--timeout"),
        ("384", "256", "--memory"),
        ("3", "1", "--tries"),
    ],
)
def test_a_worker_unlike_the_articles_is_caught(compose: dict[str, Any], old: str, new: str, expected: str) -> None:
    def change(services: dict[str, Any]) -> None:
        services["worker"]["command"] = [new if word == old else word for word in services["worker"]["command"]]

    assert any(expected in p for p in worker_problems(broken(compose, change)))


# The settings given to containers are real (an unknown BOURSE_ variable stops Bourse).


def test_an_unknown_setting_is_caught(compose: dict[str, Any]) -> None:
    copied = broken(compose, lambda s: s["api"]["environment"].update(BOURSE_DATABSE_URL="postgresql://x@y/z"))
    assert setting_name_problems(copied) == ["api: BOURSE_DATABSE_URL is not a Bourse setting"]


# nginx in front of the API.


def test_trusting_forwarded_addresses_from_anyone_but_nginx_is_caught(compose: dict[str, Any]) -> None:
    copied = broken(compose, lambda s: s["api"]["environment"].update(BOURSE_FORWARDED_ALLOW_IPS="172.31.253.0/28"))
    assert any("BOURSE_FORWARDED_ALLOW_IPS" in p for p in proxy_problems(copied, NGINX_CONF))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("client_max_body_size 1m;", "client_max_body_size 10m;", "client_max_body_size"),
        ("proxy_set_header Upgrade $http_upgrade;", "", "WebSocket"),
        ("proxy_set_header X-Forwarded-For $remote_addr;", "", "X-Forwarded-For"),
        (
            "proxy_set_header X-Forwarded-For $remote_addr;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "X-Forwarded-For",
        ),
        ("proxy_set_header X-Request-ID $bourse_request_id;", "", "X-Request-ID"),
    ],
)
def test_a_broken_proxy_is_caught(compose: dict[str, Any], old: str, new: str, expected: str) -> None:
    assert old in NGINX_CONF
    assert any(expected in p for p in proxy_problems(compose, NGINX_CONF.replace(old, new)))


def test_headers_set_for_the_server_but_shadowed_in_a_location_are_caught(compose: dict[str, Any]) -> None:
    """The first version of bourse.conf: its locations' own proxy_set_header hid the server's."""
    conf = """
    server {
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Request-ID $bourse_request_id;
        location = /api/v1/ws {
            proxy_pass http://bourse_api;
            proxy_set_header Upgrade $http_upgrade;
        }
        location / {
            proxy_pass http://bourse_api;
            proxy_set_header Connection "";
        }
    }
    """
    problems = proxy_problems(compose, "client_max_body_size 1m;" + conf)
    assert "nginx: /: X-Forwarded-For is not replaced by the address nginx saw" in problems
    assert "nginx: /api/v1/ws: X-Request-ID is not passed to the API" in problems


def test_the_websocket_goes_to_the_stream_service_and_the_rest_to_the_api(compose: dict[str, Any]) -> None:
    """Decision 0028: every Bourse process runs BOURSE_STREAM=external, so the API serves no
    WebSocket; nginx must send /api/v1/ws to `bourse stream`, and wait for it to be healthy."""
    stream = compose["services"]["stream"]
    assert stream["command"][0] == "stream"
    assert compose["x-bourse-environment"]["BOURSE_STREAM"] == "external"
    assert proxy_problems(compose, NGINX_CONF) == []
    # The controls: the WebSocket left on the API, or nginx not waiting for the stream.
    to_api = NGINX_CONF.replace("proxy_pass http://bourse_stream;", "proxy_pass http://bourse_api;")
    assert "nginx: /api/v1/ws is not proxied to the stream service" in proxy_problems(compose, to_api)
    impatient = broken(compose, lambda s: s["nginx"]["depends_on"].pop("stream"))
    assert "nginx: does not wait for the stream to be healthy" in compose_problems(impatient, REDIS_CONF, NGINX_CONF)
    unchecked = broken(compose, lambda s: s["stream"].pop("healthcheck"))
    assert any(p.startswith("stream: its healthcheck") for p in compose_problems(unchecked, REDIS_CONF, NGINX_CONF))
