"""The image, built and run for real: what it holds, how it runs, how big and how fast it is.

``python -m deploy.image_checks --image bourse:local`` (CI runs it after ``make
image``; ``.ci/run``). Each check prints what it saw and how long it took; the
first one that fails stops the run with the evidence:

- labels: OCI version, revision and source; the user, entrypoint, command and HEALTHCHECK;
- contents: no gcc, pip, uv or Node, no wheels or package caches;
- uid 1000, and a read-only root filesystem (``--read-only --tmpfs /tmp`` plus a
  volume): migrate, serve, the worker's and the scheduler's heartbeat probes;
- HEALTHCHECK turns healthy; Bourse is PID 1; ``docker stop`` drains and exits 0;
- byte-code: every module the server imports comes from a precompiled, unchecked
  .pyc, and a writable container that is allowed to write byte-code writes none;
- size: the layers Bourse adds on top of the Python base, each measured (target: 80 MB);
- cold start: ``docker start`` to ``/readyz`` 200 with PostgreSQL already up (target: 2 s; timed
  and printed, never asserted, like every speed target);
- rebuild (``--rebuild``): after a change to one Python file, only the last stage
  and the last layer are rebuilt, shown from the build's own output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bourse-check"
SIZE_TARGET_MB = 80.0
COLD_START_TARGET_S = 2.0
# The container's CPU time in ns: cgroup v1 (as Debian's dockerd 20.10 runs here), else v2.
CPU_USAGE = (
    "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null"
    " || awk '/^usage_usec/ {print $2 * 1000}' /sys/fs/cgroup/cpu.stat"
)
MB = 1_000_000


class CheckFailed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Checks:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.docker = args.docker
        self.image = args.image
        self.timings: list[tuple[str, float]] = []
        self.summary: dict[str, str] = {}

    # --- plumbing ---------------------------------------------------------------------

    def run(self, *argv: str, check_rc: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [self.docker, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
        )
        if check_rc and completed.returncode != 0:
            raise CheckFailed(
                f"docker {shlex.join(argv)} exited {completed.returncode}:\n{completed.stdout[-3000:]}"
                f"{completed.stderr[-3000:]}"
            )
        return completed

    def out(self, *argv: str, timeout: float = 300) -> str:
        return self.run(*argv, timeout=timeout).stdout

    def inspect(self, target: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.out("inspect", target))[0]
        return found

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

    def cleanup(self) -> None:
        for kind, listing in (
            ("container", ["ps", "--all", "--quiet", "--filter", f"name={PREFIX}"]),
            ("volume", ["volume", "ls", "--quiet", "--filter", f"name={PREFIX}"]),
            ("network", ["network", "ls", "--quiet", "--filter", f"name={PREFIX}"]),
        ):
            ids = self.run(*listing, check_rc=False).stdout.split()
            if ids:
                remove = ["rm", "--force", "--volumes"] if kind == "container" else [kind, "rm"]
                self.run(*remove, *ids, check_rc=False)

    def container(self, name: str, *args: str, port: int | None = None, read_only: bool = True) -> str:
        """Start a detached container of the image named ``bourse-check-<name>``."""
        argv = ["run", "--detach", "--name", f"{PREFIX}-{name}"]
        if read_only:
            argv += ["--read-only", "--tmpfs", "/tmp"]
        if port is not None:
            argv += ["--publish", f"127.0.0.1:{port}:8000"]
        return self.out(*argv, *args).strip()

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        raise CheckFailed(f"{what}: not within {timeout:.0f}s (last: {last!r})")

    def status(self, port: int, path: str) -> int | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return None

    # --- the checks -------------------------------------------------------------------

    def all(self) -> None:
        started = time.monotonic()
        self.cleanup()
        try:
            with self.step("labels and configuration"):
                self.labels()
            with self.step("contents: no compiler, pip, uv, Node, wheels or package caches"):
                self.contents()
            with self.step("uid 1000 on a read-only root filesystem: migrate, serve, worker, scheduler"):
                self.read_only()
            with self.step("byte-code: precompiled and never checked, nothing written at run time"):
                self.bytecode()
            with self.step("size: the layers Bourse adds on top of the Python base"):
                self.size()
            with self.step("cold start: docker start to /readyz 200, PostgreSQL already up"):
                self.cold_start()
            if self.args.rebuild:
                with self.step("rebuild after changing one Python file: only the last layers"):
                    self.rebuild()
        finally:
            self.cleanup()
        print("\nimage checks: every check passed")
        for key, value in self.summary.items():
            print(f"  {key}: {value}")
        for name, took in self.timings:
            print(f"  {took:6.1f} s  {name}")
        print(f"  {time.monotonic() - started:6.1f} s  in all")

    def labels(self) -> None:
        config = self.inspect(self.image)["Config"]
        labels = config.get("Labels") or {}
        version = re.search(r'__version__ = "(.+)"', (ROOT / "src/bourse/__init__.py").read_text())
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
        ).stdout.strip()
        expected = {
            "org.opencontainers.image.version": version.group(1) if version else None,
            "org.opencontainers.image.revision": revision,
        }
        for label, value in expected.items():
            check(labels.get(label) == value, f"{label} is {labels.get(label)!r}, not {value!r}")
        source = labels.get("org.opencontainers.image.source", "")
        check(source and source != "unknown", f"org.opencontainers.image.source is {source!r}")
        self.note(f"version {expected['org.opencontainers.image.version']}, revision {revision[:12]}, source {source}")
        check(config.get("User") == "1000:1000", f"USER {config.get('User')!r}")
        check(config.get("Entrypoint") == ["bourse"], f"ENTRYPOINT {config.get('Entrypoint')}")
        check(config.get("Cmd") == ["serve", "--host", "0.0.0.0"], f"CMD {config.get('Cmd')}")  # noqa: S104 - the image serves on every interface of its container
        check(config["Healthcheck"]["Test"] == ["CMD", "bourse", "healthcheck"], f"HEALTHCHECK {config['Healthcheck']}")
        env = dict(item.split("=", 1) for item in config.get("Env", []))
        leaked = sorted(set(env) & {"PIP_CERT", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "UV_PROJECT_ENVIRONMENT"})
        check(not leaked, f"build-stage variables in the runtime environment: {leaked}")
        check(env.get("PYTHONDONTWRITEBYTECODE") == "1", "PYTHONDONTWRITEBYTECODE is not set")
        self.note("USER 1000:1000, ENTRYPOINT bourse, CMD serve --host 0.0.0.0, HEALTHCHECK bourse healthcheck")

    def contents(self) -> None:
        script = r"""
found=""
for tool in gcc cc c++ g++ clang ld make pip pip3 uv uvx node nodejs npm npx yarn; do
  if command -v "$tool" >/dev/null 2>&1; then found="$found $tool=$(command -v $tool)"; fi
done
for python in python3 /opt/bourse/venv/bin/python; do
  if "$python" -c 'import pip' 2>/dev/null; then found="$found $python:pip"; fi
  if "$python" -c 'import setuptools' 2>/dev/null; then found="$found $python:setuptools"; fi
done
files=$(find / -xdev \( -name '*.whl' -o -name 'uv' -o -name 'node' -o -name 'cc1' -o -name '*.deb' \
  -o -path '*/pip/__init__.py' -o -path '/root/.cache' -o -path '*/.cache/uv' -o -path '*/.cache/pip' \) \
  -not -path '/proc/*' 2>/dev/null | tr '\n' ' ')
lists=$(find /var/lib/apt/lists -type f ! -name lock 2>/dev/null | wc -l)
echo "tools:$found"
echo "files: $files"
echo "apt-lists: $lists"
"""
        result = self.run("run", "--rm", "--entrypoint", "/bin/sh", self.image, "-c", script).stdout
        self.note(result.strip().replace("\n", "\n    "))
        lines = dict(line.split(":", 1) for line in result.strip().splitlines())
        check(not lines["tools"].strip(), f"tools in the image: {lines['tools']}")
        check(not lines["files"].strip(), f"files in the image: {lines['files']}")
        check(lines["apt-lists"].strip() == "0", f"apt lists: {lines['apt-lists']}")

    def read_only(self) -> None:
        ident = self.out("run", "--rm", "--entrypoint", "id", self.image).strip()
        check(ident.startswith("uid=1000(") and " gid=1000(" in ident, f"id: {ident}")
        self.note(f"id: {ident}")
        volume = f"{PREFIX}-data"
        data = ["--volume", f"{volume}:/var/lib/bourse"]
        migrated = self.out("run", "--rm", "--read-only", "--tmpfs", "/tmp", *data, self.image, "migrate")
        check("database migrated" in migrated, f"migrate: {migrated}")
        self.note("`migrate` on --read-only: SQLite at ./var/bourse.db on the volume mounted at /var/lib/bourse")
        port = self.args.port
        self.container("api", *data, self.image, port=port)
        self.wait_for("/readyz 200", lambda: self.status(port, "/readyz") == 200, timeout=60)
        cmdline = self.out("exec", f"{PREFIX}-api", "cat", "/proc/1/cmdline").split("\0")
        check(len(cmdline) > 2 and cmdline[1].endswith("/bin/bourse") and cmdline[2] == "serve", f"PID 1: {cmdline}")
        self.note(f"PID 1 is Bourse itself, no init: {' '.join(c for c in cmdline if c)}")

        def health() -> bool:
            state = self.inspect(f"{PREFIX}-api")["State"]["Health"]["Status"]
            check(state != "unhealthy", "HEALTHCHECK turned unhealthy")
            return bool(state == "healthy")

        started = time.monotonic()
        self.wait_for("HEALTHCHECK healthy", health, timeout=60, interval=0.5)
        self.note(f"HEALTHCHECK healthy {time.monotonic() - started:.1f} s after /readyz (its interval is 10 s)")
        diff = self.out("diff", f"{PREFIX}-api").strip()
        check(not diff, f"files changed in a read-only container: {diff}")
        stop_started = time.monotonic()
        self.out("stop", "--time", "30", f"{PREFIX}-api", timeout=60)
        took = time.monotonic() - stop_started
        state = self.inspect(f"{PREFIX}-api")["State"]
        logs = self.run("logs", f"{PREFIX}-api").stderr
        check(state["ExitCode"] == 0, f"exit code {state['ExitCode']} after docker stop:\n{logs[-2000:]}")
        check("shutdown_draining" in logs and "shutdown_stopping" in logs, f"no drain in the logs:\n{logs[-2000:]}")
        self.note(f"docker stop: drained (shutdown_draining, shutdown_stopping) and exited 0 in {took:.1f} s")
        for process, probe in (("worker", "--worker"), ("scheduler", "--scheduler")):
            self.container(process, *data, self.image, process)
            self.wait_for(f"{process} heartbeat", self.probe(process, probe), timeout=60, interval=0.5)
            self.out("stop", "--time", "30", f"{PREFIX}-{process}", timeout=60)
            code = self.inspect(f"{PREFIX}-{process}")["State"]["ExitCode"]
            check(code == 0, f"{process} exited {code} after docker stop")
            self.note(
                f"{process} on --read-only: `bourse healthcheck {probe}` passes (heartbeat in /tmp); stop exits 0"
            )

    def probe(self, process: str, flag: str) -> Callable[[], bool]:
        """Whether `bourse healthcheck FLAG` passes inside the process's container."""
        argv = ["exec", f"{PREFIX}-{process}", "bourse", "healthcheck", flag]
        return lambda: self.run(*argv, check_rc=False).returncode == 0

    def bytecode(self) -> None:
        port = self.args.port + 1
        # Writable, and allowed to write byte-code: a missing or stale .pyc would be written now.
        data = ["--volume", f"{PREFIX}-data:/var/lib/bourse"]  # migrated by the read-only check
        self.container("pyc", "--env", "PYTHONDONTWRITEBYTECODE=", *data, self.image, port=port, read_only=False)
        self.wait_for("/readyz 200", lambda: self.status(port, "/readyz") == 200, timeout=60)
        for path in ("/livez", "/api/v1/version", "/api/v1/assets", "/api/openapi.json"):
            self.status(port, path)
        script = r"""
import importlib.util, sys
import bourse.app, bourse.cli, bourse.queue.worker, bourse.queue.scheduler, bourse.psp.sim.app
import bourse.migrations, uvicorn.main, psycopg, redis, sqlalchemy.dialects.postgresql
bourse.migrations.head_revisions()
alone = with_source = 0
problems = []
for name, module in sorted(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    if origin.endswith(".pyc"):
        cached = origin
        alone += 1
    elif origin.endswith(".py"):
        cached = importlib.util.cache_from_source(origin)
        with_source += 1
    else:
        continue
    try:
        header = open(cached, "rb").read(16)
    except OSError:
        problems.append(f"{name}: no byte-code at {cached}")
        continue
    flags = int.from_bytes(header[4:8], "little")
    if flags != 0b01:
        problems.append(f"{name}: {cached} is not an unchecked hash-based .pyc (flags {flags:#04b})")
print(f"{alone + with_source} modules ({alone} from byte-code alone, {with_source} beside their sources)")
print("\n".join(problems[:20]))
sys.exit(1 if problems else 0)
"""
        result = self.run("exec", f"{PREFIX}-pyc", "python3", "-c", script, check_rc=False)
        check(result.returncode == 0, f"modules not precompiled:\n{result.stdout}{result.stderr[-2000:]}")
        self.note(f"{result.stdout.strip().splitlines()[0]} imported by the server and the workers: every one from an")
        self.note("unchecked hash-based .pyc (--invalidation-mode unchecked-hash: OPcache's validate_timestamps=0)")
        written = [
            line for line in self.out("diff", f"{PREFIX}-pyc").splitlines() if ".pyc" in line or "__pycache__" in line
        ]
        check(not written, f"byte-code written at run time: {written}")
        self.note("`docker diff` of a writable container allowed to write byte-code: no .pyc written")

    def size(self) -> None:
        base = self.args.python_image or self.dockerfile_default("PYTHON_IMAGE")
        ours = self.history(self.image)
        theirs = self.history(base)
        check(ours[len(ours) - len(theirs) :] == theirs, f"{self.image} is not built on {base}")
        added = ours[: len(ours) - len(theirs)]
        total = sum(size for size, _ in added)
        for size, created_by in reversed(added):
            if size:
                self.note(f"{size / MB:7.1f} MB  {created_by[:110]}")
        base_size = sum(size for size, _ in theirs)
        self.note(
            f"{total / MB:7.1f} MB  in all on top of {base} ({base_size / MB:.1f} MB); target {SIZE_TARGET_MB} MB"
        )
        self.summary["size above the Python base"] = f"{total / MB:.1f} MB (base {base}: {base_size / MB:.1f} MB)"
        check(total <= SIZE_TARGET_MB * MB, f"{total / MB:.1f} MB above the base, over {SIZE_TARGET_MB} MB")

    def history(self, image: str) -> list[tuple[int, str]]:
        lines = self.out("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
        layers = []
        for line in lines.splitlines():
            size, _, created_by = line.partition("\t")
            layers.append((int(size), created_by))
        return layers

    def dockerfile_default(self, name: str) -> str:
        match = re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
        check(match, f"no ARG {name} in the Dockerfile")
        return match.group(1) if match else ""

    def cold_start(self) -> None:
        network = f"{PREFIX}-net"
        self.out("network", "create", network)
        password = secrets.token_hex(16)
        postgres = self.args.postgres_image or self.compose_default("POSTGRES_IMAGE")
        self.out(
            "run", "--detach", "--name", f"{PREFIX}-pg", "--network", network,
            "--env", f"POSTGRES_PASSWORD={password}", postgres,
        )  # fmt: skip
        self.wait_for(
            "PostgreSQL ready",
            lambda: (
                self.run(
                    "exec", f"{PREFIX}-pg", "pg_isready", "--host=127.0.0.1", "--username=postgres", check_rc=False
                ).returncode
                == 0
            ),
            timeout=120,
            interval=0.5,
        )
        env = ["--env", f"BOURSE_DATABASE_URL=postgresql://postgres:{password}@{PREFIX}-pg:5432/postgres"]
        self.out("run", "--rm", "--network", network, "--read-only", "--tmpfs", "/tmp", *env, self.image, "migrate")
        port = self.args.port + 2
        name = f"{PREFIX}-cold"
        self.out(
            "create", "--name", name, "--network", network, "--read-only", "--tmpfs", "/tmp",
            "--publish", f"127.0.0.1:{port}:8000", *env, self.image,
        )  # fmt: skip
        times, cpu = [], []
        for _ in range(self.args.cold_starts):
            start = time.monotonic()
            self.out("start", name)
            self.wait_for("/readyz 200", lambda: self.status(port, "/readyz") == 200, timeout=60, interval=0.01)
            times.append(time.monotonic() - start)
            # The CPU the container used to get there: unlike the wall time, it does not
            # grow with the load other work puts on the machine.
            usage = self.run("exec", name, "sh", "-c", CPU_USAGE, check_rc=False).stdout.strip()
            if usage.isdigit():
                cpu.append(int(usage) / 1e9)
            self.out("stop", "--time", "30", name, timeout=60)
        median = statistics.median(times)
        load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
        self.note(f"docker start -> /readyz 200: {', '.join(f'{t:.2f}' for t in times)} s (median {median:.2f} s)")
        if cpu:
            self.note(f"CPU used by the container until ready: {', '.join(f'{c:.2f}' for c in cpu)} s")
        verdict = "met" if median <= COLD_START_TARGET_S else "missed"
        self.note(f"target {COLD_START_TARGET_S} s: {verdict} (1-minute load average {load}; timed, never asserted,")
        self.note("like every speed target: a shared machine is too noisy; see docs/benchmarks.md)")
        cpu_text = f", CPU until ready {statistics.median(cpu):.2f} s" if cpu else ""
        self.summary["cold start (docker start -> /readyz 200)"] = (
            f"median {median:.2f} s of {len(times)}{cpu_text}, load {load}, target {COLD_START_TARGET_S} s {verdict}"
        )

    def compose_default(self, name: str) -> str:
        match = re.search(rf"\$\{{{name}:-([^}}]+)\}}", (ROOT / "compose.yaml").read_text())
        check(match, f"no {name} in compose.yaml")
        return match.group(1) if match else ""

    def rebuild(self) -> None:
        """Build a copy of the context with one Python file changed; show which steps ran."""
        with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-context-") as tmp:
            context = Path(tmp)
            files = subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                capture_output=True, text=True, cwd=ROOT, check=True,
            ).stdout.split()  # fmt: skip
            for name in files:
                source = ROOT / name
                if source.is_file():
                    (context / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, context / name)
            changed = context / "src/bourse/cli.py"
            changed.write_text(changed.read_text() + f"\n# rebuild check {secrets.token_hex(4)}\n")
            tag = f"{PREFIX}-rebuild:latest"
            flags = shlex.split(self.args.build_flags)
            completed = subprocess.run(
                [self.docker, "build", "--progress=plain", *flags, "--tag", tag, str(context)],
                capture_output=True, text=True, timeout=900, check=False,
                env={**os.environ, "DOCKER_BUILDKIT": "1"},
            )  # fmt: skip
        self.run("image", "rm", "--force", tag, check_rc=False)
        output = completed.stdout + completed.stderr
        check(completed.returncode == 0, f"the rebuild failed:\n{output[-4000:]}")
        # FROM lines only resolve the base image; every other step either ran or was CACHED.
        steps = [step for step in build_steps(output) if "] FROM " not in step["name"]]
        for step in steps:
            self.note(f"{'CACHED ' if step['cached'] else 'ran    '} {step['name'][:110]}")
        ran = [s["name"] for s in steps if not s["cached"]]
        cached = [s["name"] for s in steps if s["cached"]]
        check(any("[deps" in name and "uv sync" in name for name in cached), "the dependencies were installed again")
        check(
            any("COPY --from=deps" in name and "/opt/bourse/venv" in name for name in cached),
            "the venv was copied again",
        )
        check(all("[app" in name or "[runtime" in name for name in ran), f"rebuilt outside the last stages: {ran}")
        check(any("COPY --from=app" in name for name in ran), "Bourse's own layer was not rebuilt")
        self.summary["rebuild after one Python file"] = f"{len(ran)} steps ran, {len(cached)} cached"


def build_steps(output: str) -> list[dict[str, Any]]:
    """BuildKit's plain progress: each ``#N [stage i/n] INSTRUCTION`` and whether it was CACHED, in step order."""
    names: dict[str, str] = {}
    cached: set[str] = set()
    for line in output.splitlines():
        match = re.match(r"#(\d+) (\[[\w-]+ +\d+/\d+\] .*)$", line)
        if match:
            names.setdefault(match.group(1), match.group(2))
        done = re.match(r"#(\d+) CACHED$", line)
        if done:
            cached.add(done.group(1))
    steps = [{"name": name, "cached": number in cached} for number, name in names.items()]
    return sorted(steps, key=lambda step: step_order(str(step["name"])))


def step_order(name: str) -> tuple[int, int]:
    """Stages in the Dockerfile's order, then steps in theirs."""
    match = re.match(r"\[([\w-]+) +(\d+)/\d+\]", name)
    if match is None:
        return (99, 0)
    order = {"deps": 0, "app": 1, "web": 2, "runtime": 3}
    return (order.get(match.group(1), 50), int(match.group(2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image_checks", description=__doc__)
    parser.add_argument("--image", default="bourse:local")
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--python-image", default=None, help="The Python base (default: the Dockerfile's).")
    parser.add_argument("--postgres-image", default=None, help="PostgreSQL for the cold start (default: compose's).")
    parser.add_argument("--port", type=int, default=18520, help="First of three free host ports on 127.0.0.1.")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="Also time a rebuild after one Python file changed.")
    parser.add_argument("--build-flags", default="", help="Extra `docker build` flags for the rebuild.")
    args = parser.parse_args(argv)
    checks = Checks(args)
    try:
        checks.all()
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
