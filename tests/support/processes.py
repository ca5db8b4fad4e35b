"""Starting and probing real Bourse processes from tests."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """The current environment without BOURSE_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BOURSE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def run_bourse(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``bourse`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bourse", *args],
        env=env or clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_status(url: str, status: int = 200, timeout: float = 30.0) -> None:
    last: list[object] = [None]

    def answers() -> bool:
        try:
            last[0] = httpx.get(url, timeout=1.0).status_code
        except httpx.HTTPError as exc:
            last[0] = exc
        return last[0] == status

    wait_until(answers, lambda: f"{url} to answer {status} (last: {last[0]!r})", timeout=timeout, interval=0.1)


def metric_value(base: str, name: str) -> float:
    """One unlabelled sample from the Prometheus text at ``base``/metrics."""
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in {base}/metrics")


def wait_for_output(process: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    """Read the process's output until ``text`` appears; return what was read.

    Reads the raw pipe (never the buffered wrapper), so a later :func:`stop`
    still returns everything printed after this point.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = bytearray()

    def printed() -> bool:
        # Waits briefly for output itself, so it reads as soon as something is printed.
        if text.encode() not in seen and select.select([fd], [], [], 0.05)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"process closed its output before printing {text!r}: {_tail(seen)}")
            seen.extend(chunk)
        return text.encode() in seen

    wait_until(printed, lambda: f"{text!r} to be printed; printed: {_tail(seen)}", timeout=timeout, interval=0)
    return seen.decode(errors="replace")


def _tail(output: bytearray) -> str:
    return output.decode(errors="replace")[-2000:]


def stop(process: subprocess.Popen[str]) -> str:
    """Kill the process if it is still running; return everything it printed."""
    if process.poll() is None:
        process.kill()
    output, _ = process.communicate(timeout=10)
    return output or ""
