"""``bourse bench fanout``: the subscribers' sequence check, the roles it counts CPU for,
and its refusals. The run against real processes is in tests/trading/test_stream_process.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from bourse.bench.fanout import _Fanout, _role, _spent, _Subscriber, _summary, bench_fanout


def _snapshots(subscriber: _Subscriber, book: int = 10, trades: int = 0) -> None:
    subscriber.apply({"type": "snapshot", "channel": "book", "sequence": book})
    subscriber.apply({"type": "snapshot", "channel": "trades", "sequence": trades})


def _delta(sequence: int, previous: int) -> dict[str, object]:
    return {"type": "delta", "channel": "book", "sequence": sequence, "prev_sequence": previous}


def test_a_chained_feed_is_gapless_and_old_messages_are_skipped() -> None:
    subscriber = _Subscriber()
    subscriber.apply(_delta(9, 8))  # before the snapshot: the snapshot covers it
    _snapshots(subscriber)
    assert subscriber.snapshotted()
    for message in (
        _delta(10, 9),  # queued before the snapshot and older than it
        _delta(12, 10),
        {"type": "trade", "channel": "trades", "sequence": 12, "prev_sequence": None},
        _delta(13, 12),
        {"type": "trade", "channel": "trades", "sequence": 13, "prev_sequence": 12},
    ):
        subscriber.apply(message)
    assert subscriber.last == {"book": 13, "trades": 13}
    assert (subscriber.gaps, subscriber.resyncs) == (0, 0)


def test_a_message_that_does_not_chain_is_a_gap_and_a_resync_is_not() -> None:
    gapped = _Subscriber()
    _snapshots(gapped)
    gapped.apply(_delta(14, 12))  # 11 and 12 never came
    assert (gapped.gaps, gapped.last["book"]) == (1, 14)
    gapped.apply({"type": "trade", "channel": "trades", "sequence": 20, "prev_sequence": 15})
    assert gapped.gaps == 2

    resynced = _Subscriber()
    _snapshots(resynced)
    resynced.apply({"type": "resync", "channel": "book", "instrument": "BTC-USD"})
    assert not resynced.snapshotted()
    resynced.apply(_delta(14, 12))  # between the resync and the fresh snapshot: ignored
    resynced.apply({"type": "snapshot", "channel": "book", "sequence": 14})
    resynced.apply(_delta(15, 14))
    assert (resynced.gaps, resynced.resyncs, resynced.last["book"]) == (0, 1, 15)


def test_the_summary_needs_every_subscriber_complete_and_without_gaps() -> None:
    complete, behind, gapped = _Subscriber(), _Subscriber(), _Subscriber()
    for subscriber in (complete, behind, gapped):
        _snapshots(subscriber, book=5, trades=3)
    complete.apply(_delta(6, 5))
    gapped.apply(_delta(6, 4))
    targets = {"book": 6, "trades": 3}
    assert _summary(_Fanout(subscribers=[complete]), targets)["gapless_or_resynced"] is True
    summary = _summary(_Fanout(subscribers=[complete, behind]), targets)
    assert (summary["complete"], summary["gapless_or_resynced"]) == (1, False)
    summary = _summary(_Fanout(subscribers=[complete, gapped]), targets)
    assert (summary["complete"], summary["with_gaps"], summary["gapless_or_resynced"]) == (2, 1, False)


@pytest.mark.parametrize(
    ("name", "cmdline", "role"),
    [
        ("python", ["/v/bin/python", "-m", "bourse", "serve", "--fd", "5"], "api"),
        ("python", ["/v/bin/python", "/v/bin/bourse", "stream", "--port", "1"], "stream"),
        ("bourse", ["/v/bin/python", "/v/bin/bourse", "matcher"], "matcher"),
        ("python", ["/v/bin/python", "-m", "bourse", "bench", "fanout"], None),
        ("python", ["/v/bin/python", "-m", "pytest"], None),
        ("postgres", ["postgres: 15/main: postgres bench"], "postgresql"),
        ("redis-server", ["redis-server *:6379"], "redis"),
    ],
)
def test_cpu_is_counted_by_the_role_a_process_plays(name: str, cmdline: list[str], role: str | None) -> None:
    assert _role(SimpleNamespace(info={"name": name, "cmdline": cmdline})) == role


@pytest.mark.parametrize(
    "args",
    [
        ["--api-url", "ftp://x"],
        ["--stream-url", "ws://127.0.0.1:1/api/v1/ws"],
        ["--rate", "0"],
        ["--subscribers", "0"],
        ["--concurrency", "4", "--traders", "2"],
    ],
)
def test_bench_fanout_refuses_bad_arguments(args: list[str]) -> None:
    result = CliRunner().invoke(bench_fanout, args)
    assert result.exit_code == 2, result.output


def test_cpu_is_counted_per_process_between_two_samples() -> None:
    """A process that exits between the samples takes its CPU with it (never a negative
    figure); one that started meanwhile counts whole; the machine's busy time is its own row."""
    before = {10: ("api", 5.0), 11: ("api", 7.0), 12: ("postgresql", 1.0), -1: ("machine busy", 100.0)}
    after = {10: ("api", 6.5), 12: ("postgresql", 1.25), 13: ("stream", 2.0), -1: ("machine busy", 130.0)}
    assert _spent(before, after) == {"api": 1.5, "machine busy": 30.0, "postgresql": 0.2, "stream": 2.0}
