"""The compose stack from the outside: run compose, wait for every healthcheck, read container state.

Used by ``make compose-up`` (``python -m deploy.stack wait``) and by the end-to-end
run (``deploy/e2e``). It works with ``docker compose`` (v2) and ``docker-compose``
1.29 alike, so it relies only on ``compose ps -q`` and ``docker inspect``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class StackError(AssertionError):
    """The stack did not do what was expected; the message says what and shows the evidence."""


@dataclass(frozen=True)
class Container:
    id: str
    service: str
    status: str  # created, running, exited, ...
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    exit_code: int
    started_at: str
    restart_count: int
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass
class Stack:
    compose: list[str]  # e.g. ["docker", "compose"] or ["docker-compose"]
    project: str
    files: list[str]
    env: dict[str, str]
    docker: str = "docker"

    @classmethod
    def from_args(cls, compose: str, project: str, files: list[str], env: dict[str, str] | None = None) -> Stack:
        words = shlex.split(compose)
        docker = words[0] if len(words) > 1 and words[1] == "compose" else os.environ.get("DOCKER", "docker")
        return cls(words, project, files, {**os.environ, **(env or {})}, docker)

    # --- running things ---------------------------------------------------------------

    def compose_argv(self, *args: str) -> list[str]:
        argv = [*self.compose, "--project-name", self.project]
        for name in self.files:
            argv += ["--file", name]
        return [*argv, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 600, stderr: bool = False) -> str:
        """Run ``compose ARGS``; its stdout (and stderr if asked). A failure raises with everything it printed."""
        return run(self.compose_argv(*args), env=self.env, check=check, timeout=timeout, stderr=stderr)

    def docker_run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return run([self.docker, *args], env=self.env, check=check, timeout=timeout)

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 120) -> str:
        """Run a command in the service's running container (no TTY)."""
        return self.run("exec", "-T", service, *argv, check=check, timeout=timeout)

    # --- state ------------------------------------------------------------------------

    def container_ids(self, service: str | None = None) -> list[str]:
        # v2 lists running containers only unless asked; 1.29 always lists them all.
        args = ["ps", "-q", "--all"] if self.compose[-1] == "compose" else ["ps", "-q"]
        out = self.run(*args, *([service] if service else []))
        return [line.strip() for line in out.splitlines() if line.strip()]

    def containers(self, service: str | None = None) -> list[Container]:
        ids = self.container_ids(service)
        if not ids:
            return []
        found = json.loads(self.docker_run("inspect", *ids))
        return [container_of(item) for item in found]

    def container(self, service: str) -> Container:
        found = self.containers(service)
        if len(found) != 1:
            raise StackError(f"expected one {service} container, found {len(found)}")
        return found[0]

    def logs(self, service: str, since: str | None = None) -> str:
        container = self.container(service)
        args = ["logs", *(["--since", since] if since else []), container.id]
        completed = subprocess.run(
            [self.docker, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        return completed.stdout + completed.stderr

    def wait_healthy(self, timeout: float = 240.0, services: list[str] | None = None) -> float:
        """Wait until every service is up: healthy if it has a healthcheck, exited 0 if one-shot.

        Fails at once, with the logs, if a container exits with an error or turns
        unhealthy after having been healthy. Returns the seconds it took.
        """
        start = time.monotonic()
        wanted = set(services or self.services())
        last: dict[str, str] = {}
        while True:
            containers = {c.service: c for c in self.containers()}
            pending = []
            for service in sorted(wanted):
                container = containers.get(service)
                if container is None:
                    pending.append(f"{service}: no container")
                    continue
                state = describe(container)
                last[service] = state
                if container.status == "exited" and container.exit_code != 0:
                    raise StackError(f"{service} exited with {container.exit_code}:\n{self.logs(service)[-4000:]}")
                if container.status == "exited" and container.exit_code == 0 and one_shot(container):
                    continue
                if container.status == "running" and container.health in {None, "healthy"}:
                    continue
                pending.append(f"{service}: {state}")
            if not pending:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                details = "\n".join(f"--- {s} ---\n{self.logs(s)[-2000:]}" for s in sorted(wanted) if s in containers)
                raise StackError(f"not healthy after {timeout:.0f}s: {'; '.join(pending)}\n{details}")
            time.sleep(1.0)

    def services(self) -> list[str]:
        return [line for line in self.run("config", "--services").splitlines() if line.strip()]


def container_of(item: dict[str, Any]) -> Container:
    state = item["State"]
    labels = item["Config"].get("Labels") or {}
    health = state.get("Health")
    return Container(
        id=item["Id"],
        service=labels.get("com.docker.compose.service", item["Name"].lstrip("/")),
        status=state["Status"],
        health=health["Status"] if health else None,
        exit_code=int(state.get("ExitCode", 0)),
        started_at=state.get("StartedAt", ""),
        restart_count=int(item.get("RestartCount", 0)),
        raw=item,
    )


def one_shot(container: Container) -> bool:
    policy = container.raw["HostConfig"].get("RestartPolicy", {}).get("Name", "no")
    return policy in {"", "no"}


def describe(container: Container) -> str:
    if container.status == "exited":
        return f"exited {container.exit_code}"
    return container.status + (f" ({container.health})" if container.health else "")


def run(argv: list[str], *, env: dict[str, str], check: bool = True, timeout: float = 600, stderr: bool = False) -> str:
    completed = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if check and completed.returncode != 0:
        output = completed.stdout[-4000:] + completed.stderr[-4000:]
        raise StackError(f"{shlex.join(argv)} exited with {completed.returncode}:\n{output}")
    return completed.stdout + (completed.stderr if stderr else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait", help="Wait until every service of a running stack is healthy.")
    wait.add_argument("--compose", default="docker compose", help="The compose command.")
    wait.add_argument("--project", required=True)
    wait.add_argument("-f", "--file", action="append", dest="files", default=[])
    wait.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    stack = Stack.from_args(args.compose, args.project, args.files or ["compose.yaml"])
    try:
        seconds = stack.wait_healthy(timeout=args.timeout)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    print(f"stack: every service is up ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
