"""A small closed-loop HTTP/1.1 load generator for overload tests.

Each connection sends one request, reads the whole response, and sends the next,
over keep-alive, as ``wrk`` does; no backoff unless asked. Raw asyncio streams keep
the generator's own CPU cost per request well below the server's, which matters
on a two-core machine where both share the CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    # (completion time since start, status, latency) of every answered request
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)

    def rate(self, status: int, start: float = 0.0, end: float | None = None) -> float:
        end = self.seconds if end is None else end
        count = sum(1 for at, got, _ in self.samples if got == status and start <= at < end)
        return count / (end - start)

    def per_second(self, status: int) -> list[int]:
        buckets = [0] * max(1, int(self.seconds + 0.999))
        for at, got, _ in self.samples:
            if got == status and int(at) < len(buckets):
                buckets[int(at)] += 1
        return buckets

    def latencies(self, status: int) -> list[float]:
        return sorted(latency for _, got, latency in self.samples if got == status)

    def quantile(self, status: int, q: float) -> float:
        values = self.latencies(status)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]


def _request(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    start: float,
    timeout: float,
    result: LoadResult,
    honour_retry_after: bool,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            assert reader is not None
            assert writer is not None
            sent = time.monotonic()
            writer.write(request)
            status, headers = await asyncio.wait_for(_read_response(reader), timeout)
        except TimeoutError:
            result.timeouts += 1
            _close(writer)
            writer = None
            continue
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            _close(writer)
            writer = None
            await asyncio.sleep(0.05)
            continue
        done = time.monotonic()
        result.statuses[status] += 1
        result.samples.append((done - start, status, done - sent))
        if "retry-after" in headers:
            result.retry_after[headers["retry-after"]] += 1
        if headers.get("connection", "").lower() == "close":
            _close(writer)
            writer = None
        if honour_retry_after and status == 503 and "retry-after" in headers:
            await asyncio.sleep(min(float(headers["retry-after"]), max(0.0, deadline - time.monotonic())))
    _close(writer)


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


async def hammer(
    host: str,
    port: int,
    path: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 10.0,
    honour_retry_after: bool = False,
) -> LoadResult:
    """Keep ``connections`` requests outstanding for ``seconds``; every answer is recorded.

    A request not answered within ``timeout`` counts as a timeout (and its connection
    is replaced).
    """
    request = _request(method, path, f"{host}:{port}", headers or {})
    start = time.monotonic()
    result = LoadResult(seconds=seconds)
    deadline = start + seconds
    await asyncio.gather(
        *(
            _connection(host, port, request, deadline, start, timeout, result, honour_retry_after)
            for _ in range(connections)
        )
    )
    return result


def run_hammer(host: str, port: int, path: str, **kwargs: object) -> LoadResult:
    return asyncio.run(hammer(host, port, path, **kwargs))  # type: ignore[arg-type]
