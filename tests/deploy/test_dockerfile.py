"""The Dockerfile held to the issue's rules and against the source article's Dockerfile mistakes (flaw 8).

The image itself is built, run and measured by CI (``deploy/ci/image_checks.py``);
this reads the file, on every ``make test``.
"""

from __future__ import annotations

import pytest

from tests.support.delivery import ROOT, dockerfile_problems

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_dockerfile_keeps_every_rule() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


def test_it_has_the_stages_the_issue_names() -> None:
    froms = [line.split() for line in DOCKERFILE.splitlines() if line.startswith("FROM ")]
    assert froms == [
        ["FROM", "${PYTHON_IMAGE}", "AS", "deps"],
        ["FROM", "${NODE_IMAGE}", "AS", "web"],
        ["FROM", "deps", "AS", "app"],
        ["FROM", "${PYTHON_IMAGE}", "AS", "runtime"],
    ]


def test_the_build_context_is_an_allow_list() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "LICENSE", "migrations/", "src/", "web/"}
    # The UI's dependencies and its build are made inside the image, never sent from here.
    assert {"web/node_modules/", "src/bourse/webui/dist/"} <= set(lines)


def runtime_line(line: str) -> str:
    """The Dockerfile with one more instruction at the end of its runtime stage."""
    return DOCKERFILE.replace("\nARG VERSION=unknown", f"\n{line}\nARG VERSION=unknown")


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        # The article's COPY lines that lost their --from= stage.
        (runtime_line("COPY /app/vendor ./vendor"), "without --from="),
        (runtime_line("COPY . ."), "without --from="),
        # Its chown -R layer after the copies.
        (runtime_line("RUN chown -R 1000:1000 /opt/bourse"), "chown in a RUN layer"),
        # Copies of Bourse's files that would belong to root.
        (DOCKERFILE.replace("COPY --from=app --chown=1000:1000", "COPY --from=app"), "without --chown=1000:1000"),
        # Mutable or hard-coded base images.
        (DOCKERFILE.replace("ARG PYTHON_IMAGE=python:3.11-slim-bookworm", "ARG PYTHON_IMAGE=python"), "fixed tag"),
        (DOCKERFILE.replace("python:3.11-slim-bookworm", "python:latest"), "fixed tag"),
        (DOCKERFILE.replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM python:3.11-slim AS runtime"), "build argument"),
        # Root, or no probe, or no labels.
        (DOCKERFILE.replace("USER 1000:1000", "USER root"), "runs as 'root'"),
        (DOCKERFILE.replace("USER 1000:1000", "USER bourse"), "runs as 'bourse'"),
        (DOCKERFILE.replace('CMD ["bourse", "healthcheck"]', 'CMD ["true"]'), "HEALTHCHECK"),
        (DOCKERFILE.replace("org.opencontainers.image.revision=", "revision="), "revision label"),
        # The CA bundle of CI's builds leaking into the runtime image.
        (runtime_line("ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"), "CA bundle"),
        (runtime_line("ARG PIP_CERT"), "declared in the runtime stage"),
        # A setting that does not exist would stop every process.
        (runtime_line("ENV BOURSE_WORKER_HEARTBEAT=/tmp/x"), "not a Bourse setting"),
        ("# syntax=docker/dockerfile:1\n" + DOCKERFILE, "syntax"),
    ],
)
def test_each_mistake_is_caught(dockerfile: str, expected: str) -> None:
    assert dockerfile != DOCKERFILE
    problems = dockerfile_problems(dockerfile)
    assert any(expected in p for p in problems), problems
