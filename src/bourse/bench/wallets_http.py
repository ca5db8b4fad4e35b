"""``bourse bench wallets-http``: ``GET /api/v1/wallets`` against raw uvicorn's hello world.

The request path's own cost, read end to end: a signed-in client asking for its
balances makes the middleware, the token check, the principal, a database lease and
one query, and the JSON answer. The peer baseline is the least any Python ASGI
server can do on the same machine: uvicorn serving a raw ASGI "hello world" (no
framework), with the same number of processes, measured by the same ``wrk`` run in
the same invocation. The figure that matters is the ratio of the two.

Both servers are started here, one after the other, on free ports: ``bourse serve
--workers N`` on the configured database (which must be migrated), and
``python -m uvicorn bourse.bench.hello:app --workers N``. The load generator is
``wrk`` (Debian's ``wrk`` package), which must be on ``PATH``: a C client, so the
client's own CPU stays small next to the servers'.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from bourse.bench.harness import (
    Children,
    bourse_command,
    command_settings,
    emit,
    free_port,
    json_option,
    machine,
    seconds_option,
    tree_cpu,
)

BENCH_ASSET = "USD"
FUNDING = 1_000_000
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_LATENCY_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RATE_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL_LINE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(click.ClickException):
    """wrk is missing, failed, or printed something this parser does not know."""


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of one ``wrk --latency`` run: requests, rate, percentiles, failures."""
    rate = _RATE_LINE.search(output)
    total = _TOTAL_LINE.search(output)
    if rate is None or total is None:
        raise WrkError(f"wrk printed no request rate:\n{output}")
    latencies = {f"p{q}_ms": round(float(value) * _UNITS[unit], 3) for q, value, unit in _LATENCY_LINE.findall(output)}
    if set(latencies) != {"p50_ms", "p75_ms", "p90_ms", "p99_ms"}:
        raise WrkError(f"wrk printed no latency distribution (was --latency given?):\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    return {
        "requests": int(total.group(1)),
        "requests_per_second": round(float(rate.group(1)), 1),
        **latencies,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


def _wrk(url: str, *, seconds: float, connections: int, threads: int, token: str | None) -> dict[str, Any]:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


def _answers(url: str, headers: dict[str, str] | None) -> bool:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1.0)
    try:
        connection.request("GET", parts.path or "/", headers=headers or {})
        return connection.getresponse().status == 200  # noqa: PLR2004
    except OSError:
        return False
    finally:
        connection.close()


def _wait_for(url: str, what: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(url, headers):
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} did not answer 200 at {url} within {timeout:g}s")
        time.sleep(0.1)


def _measure(
    children: Children, name: str, argv: list[str], *, url: str, ready: str, token: str | None, **load: Any
) -> dict[str, Any]:
    """Start one server, warm it up for a second, then measure it under ``wrk``; stop it."""
    process = children.start(name, argv)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        _wait_for(ready, name)
        _wait_for(url, name, headers=headers)
        _wrk(url, seconds=1, connections=load["connections"], threads=load["threads"], token=token)
        before = tree_cpu(process.pid)
        figures = _wrk(url, token=token, **load)
        used = tree_cpu(process.pid) - before
    finally:
        children.stop()
        children.processes.clear()
        children.roles.clear()
    figures["server_cpu_ms_per_request"] = round(used * 1000 / max(1, figures["requests"]), 3)
    return figures


@click.command("wallets-http")
@click.option(
    "--server-workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Processes of each server (`bourse serve --workers`, `uvicorn --workers`).",
)
@seconds_option
@click.option("--connections", type=click.IntRange(1, 10_000), default=64, show_default=True, help="wrk connections.")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="wrk threads.")
@json_option
def bench_wallets_http(server_workers: int, seconds: float, connections: int, threads: int, as_json: bool) -> None:
    """GET /api/v1/wallets with a valid token vs raw uvicorn's hello world, both under wrk."""
    if shutil.which("wrk") is None:
        raise WrkError("wrk is not on PATH (Debian: apt-get install wrk)")
    settings = command_settings()
    from bourse.bench.users import funded_bench_users

    _, tokens = funded_bench_users(settings, 1, {BENCH_ASSET: FUNDING}, prefix="bench-wallets", analyze=())
    token = next(iter(tokens.values()))
    load = {"seconds": seconds, "connections": connections, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="bourse-bench-wallets-") as scratch:
        children = Children({"BOURSE_LOG_LEVEL": "warning", **os.environ}, Path(scratch))
        hello_port, api_port = free_port(), free_port()
        hello_url = f"http://127.0.0.1:{hello_port}/"
        hello = _measure(
            children,
            "hello",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bourse.bench.hello:app",
                "--port",
                str(hello_port),
                "--workers",
                str(server_workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            url=hello_url,
            ready=hello_url,
            token=None,
            **load,
        )
        api_base = f"http://127.0.0.1:{api_port}"
        wallets = _measure(
            children,
            "api",
            bourse_command("serve", "--port", str(api_port), "--workers", str(server_workers)),
            url=f"{api_base}/api/v1/wallets",
            ready=f"{api_base}/readyz",
            token=token,
            **load,
        )
    result = {
        "benchmark": "wallets-http",
        "server_workers": server_workers,
        "connections": connections,
        "seconds": seconds,
        "wallets": wallets,
        "hello_world": hello,
        "ratio": round(wallets["requests_per_second"] / hello["requests_per_second"], 3),
        "machine": machine(),
    }
    summary = (
        f"GET /api/v1/wallets: {wallets['requests_per_second']:,.0f} req/s (p50 {wallets['p50_ms']} ms,"
        f" p99 {wallets['p99_ms']} ms, {wallets['server_cpu_ms_per_request']} ms server CPU each)\n"
        f"uvicorn hello world: {hello['requests_per_second']:,.0f} req/s (p50 {hello['p50_ms']} ms,"
        f" p99 {hello['p99_ms']} ms, {hello['server_cpu_ms_per_request']} ms server CPU each)\n"
        f"ratio: {result['ratio']}  ({server_workers} processes each, wrk -t{threads} -c{connections})"
    )
    emit(result, as_json, summary=summary)
    if wallets["non_2xx"] or wallets["socket_errors"]:
        raise click.ClickException(
            f"GET /api/v1/wallets failed {wallets['non_2xx']} times and had {wallets['socket_errors']} socket errors"
        )
