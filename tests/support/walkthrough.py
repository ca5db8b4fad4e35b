"""Running README.md's walkthroughs as a newcomer would: their shell blocks, as written, in order.

A walkthrough block is a fenced ``sh`` block right after an HTML comment naming its
walkthrough, ``<!-- walkthrough: deposits -->``. A walkthrough's blocks are split
into steps at their ``# N. ...`` comment lines (lines before the first one are step
0, the helpers); each step is sourced, exactly as written, by one long-lived bash
session per walkthrough, so the variables and functions one step defines are there
for the next, as in a terminal. All of them run against one ``bourse up`` on the
embedded defaults, started in an empty directory whose ``.venv`` is this checkout's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, clean_env, free_port, start, stop, wait_for_output
from tests.support.waiting import wait_until

README = ROOT / "README.md"
_MARKER = re.compile(r"<!--\s*walkthrough:\s*(?P<name>[a-z][a-z0-9-]*)\s*-->")
_FENCE = re.compile(r"```sh\n(?P<body>.*?)^```$", re.DOTALL | re.MULTILINE)
_STEP = re.compile(r"^# (\d+)\. ", re.MULTILINE)
_HEADING = re.compile(r"^#{2,6} (?P<title>.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Step:
    walkthrough: str
    number: int  # 0: the lines before the first numbered step (the helpers)
    text: str


def walkthrough_steps(readme: str) -> dict[str, list[Step]]:
    """Every walkthrough's steps in the order the README gives them.

    Refuses a marker that is not directly followed by an ``sh`` block, an unmarked
    ``sh`` block under a "Walkthrough" heading (it would silently go untested), and
    steps that are not numbered 1, 2, 3, ... in order.
    """
    walkthroughs: dict[str, list[Step]] = {}
    marked: set[int] = set()
    for marker in _MARKER.finditer(readme):
        rest = readme[marker.end() :]
        fence = _FENCE.match(rest.lstrip("\n"))
        if fence is None:
            raise ValueError(f"README.md: {marker.group(0)} is not followed by a ```sh block")
        marked.add(marker.end() + len(rest) - len(rest.lstrip("\n")))
        steps = walkthroughs.setdefault(marker.group("name"), [])
        body = fence.group("body")
        numbered = list(_STEP.finditer(body))
        if not numbered or numbered[0].start() > 0:
            head = body[: numbered[0].start()] if numbered else body
            if steps:  # only a walkthrough's first block may start with unnumbered lines
                raise ValueError(f"README.md: a {marker.group('name')} block starts before its step comment")
            steps.append(Step(marker.group("name"), 0, head))
        ends = [m.start() for m in numbered[1:]] + [len(body)]
        for found, end in zip(numbered, ends, strict=True):
            steps.append(Step(marker.group("name"), int(found.group(1)), body[found.start() : end]))
    headings = list(_HEADING.finditer(readme))
    for index, heading in enumerate(headings):
        if not heading.group("title").startswith("Walkthrough"):
            continue
        end = headings[index + 1].start() if index + 1 < len(headings) else len(readme)
        for fence in re.finditer(r"^```sh$", readme[heading.end() : end], re.MULTILINE):
            if heading.end() + fence.start() not in marked:
                raise ValueError(f"README.md: an sh block under {heading.group(0)!r} has no walkthrough marker")
    for name, steps in walkthroughs.items():
        numbers = [step.number for step in steps if step.number]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"README.md: the {name} walkthrough's steps are numbered {numbers}")
    return walkthroughs


def outputs(text: str) -> list[Any]:
    """What a step printed: each JSON document decoded (curl prints no newline after one), other lines as text."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    at = 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        if text[at] in "{[":
            try:
                value, at = decoder.raw_decode(text, at)
            except ValueError:
                pass
            else:
                found.append(value)
                continue
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        found.append(text[at:end].rstrip())
        at = end
    return found


@dataclass(frozen=True)
class Instance:
    """A running ``bourse up``: the API's URL, the simulator's, and the shell environment."""

    url: str
    sim_url: str
    env: dict[str, str]
    cwd: Path


@contextlib.contextmanager
def bourse_up(directory: Path) -> Iterator[Instance]:
    """``bourse up`` on the embedded defaults (SQLite in ./var) in ``directory``, on free ports.

    ``directory/.venv`` links to this checkout's virtualenv, so the README's
    ``.venv/bin/...`` commands work there as they do in a checkout, while
    ``./var`` (the database, the heartbeats) is the directory's own.
    """
    (directory / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    port, sim_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = clean_env(BOURSE_PORT=str(port), BOURSE_PSP_SIM_URL=sim_url)
    process = start(["-m", "bourse", "up"], env, cwd=directory)
    try:
        wait_for_output(process, "Bourse is running at", timeout=120)
        yield Instance(f"http://127.0.0.1:{port}", sim_url, env, directory)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        finally:
            stop(process)


class Shell:
    """One bash session, fed step after step as a person pastes them into a terminal.

    Each step's text is written to a file and sourced with stdin from /dev/null (so
    nothing it runs can read the session's own input) and stderr to a file of its
    own; the step's stdout is read up to a sentinel the session prints after it.
    """

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._sentinel = f"__step_done_{uuid.uuid4().hex}__"
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background jobs are killed with it
        )
        self._pending = b""
        self.transcript: list[tuple[Step, str, str]] = []

    def run(self, step: Step, timeout: float = 150) -> tuple[str, str]:
        """Source ``step`` in the session; its stdout and stderr."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        script = self.scratch / f"{step.walkthrough}-{step.number}.sh"
        errors = script.with_suffix(".err")
        script.write_text(step.text)
        command = f"source '{script}' </dev/null 2>'{errors}'; printf '\\n{self._sentinel} %d\\n' $?\n"
        self._process.stdin.write(command.encode())
        self._process.stdin.flush()
        fd = self._process.stdout.fileno()
        end = re.compile(rb"\n" + self._sentinel.encode() + rb" (\d+)\n")

        def finished() -> re.Match[bytes] | None:
            """The sentinel, once the step has printed it; reads what the shell has printed so far."""
            if (found := end.search(self._pending)) is not None:
                return found
            ready, _, _ = select.select([fd], [], [], 0.5)  # blocks for output: no sleep between reads
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the shell exited during {step.walkthrough} step {step.number}")
                self._pending += chunk
            return end.search(self._pending)

        def unfinished() -> str:
            stderr = errors.read_text() if errors.exists() else ""
            return (
                f"{step.walkthrough} step {step.number} to finish; it printed:\n"
                f"{self._pending.decode(errors='replace')}\nstderr:\n{stderr}"
            )

        try:
            done = wait_until(finished, unfinished, timeout=timeout, interval=0)
        except AssertionError:
            self.close()
            raise
        assert done is not None
        output = self._pending[: done.start()].decode()
        self._pending = self._pending[done.end() :]
        stderr = errors.read_text()
        self.transcript.append((step, output, stderr))
        return output, stderr

    def close(self) -> None:
        """End the session and anything it left running in the background."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
