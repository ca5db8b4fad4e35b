"""README.md's walkthroughs, run as a newcomer runs them: its own shell blocks, as written, in order.

One ``bourse up`` on the embedded defaults (SQLite) in an empty directory; the
deposits walkthrough in one bash session, then the trading walkthrough in a second
one on the same instance, step by step. Each step's output is what the README
promises (the JSON the API answers, the states, the balances, the WebSocket
messages, the commission and its payout), and nothing goes to stderr but Bourse's
own info log lines. The blocks come out of README.md itself (see
``tests/support/walkthrough.py``), so a README that stops working fails here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bourse.settings import Settings
from tests.support.processes import run_bourse
from tests.support.walkthrough import README, Instance, Shell, Step, bourse_up, outputs, walkthrough_steps

pytestmark = pytest.mark.process

SIM_PORT_IN_README = re.compile(r"^\| `(http://127\.0\.0\.1:\d+/?)` \| The PSP simulator", re.MULTILINE)


class Session:
    """A walkthrough's bash session that runs its steps strictly in the README's order."""

    def __init__(self, shell: Shell, steps: list[Step]) -> None:
        self.shell = shell
        self.steps = list(steps)

    def step(self, number: int) -> list[Any]:
        """Run the next step, which must be ``number``; what it printed, JSON decoded."""
        assert self.steps, f"the README has no step {number}"
        step = self.steps.pop(0)
        assert step.number == number, f"the README's next {step.walkthrough} step is {step.number}, not {number}"
        output, stderr = self.shell.run(step)
        where = f"{step.walkthrough} step {number}:\n{step.text}\nprinted:\n{output}\nstderr:\n{stderr}"
        for line in stderr.splitlines():  # only Bourse's own log lines (bourse users create, payout), at info
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            assert isinstance(record, dict), f"{where}\nunexpected stderr line {line!r}"
            assert record.get("level") in {"debug", "info"}, f"{where}\nunexpected stderr line {line!r}"
        printed = outputs(output)
        for value in printed:
            assert not (isinstance(value, dict) and "error" in value), f"{where}\nan error answer: {value}"
        return printed

    def done(self) -> None:
        assert self.steps == [], f"steps the test did not run: {[s.number for s in self.steps]}"


def _wallet(printed: Any, asset: str) -> tuple[str, str]:
    assert isinstance(printed, dict), printed
    wallet = next(w for w in printed["wallets"] if w["asset"] == asset)
    return wallet["available"], wallet["held"]


def _deposits(session: Session, instance: Instance) -> None:
    assert session.step(0) == []  # the helpers print nothing

    # 1. Register and sign in.
    [registered] = session.step(1)
    assert (registered["email"], registered["role"], registered["status"]) == ("ada@example.com", "client", "active")

    # 2. A pending deposit of 1500.00 USD, with the simulator's checkout page.
    [deposit] = session.step(2)
    assert (deposit["asset"], deposit["amount"], deposit["state"]) == ("USD", "1500.00", "pending")
    assert deposit["checkout_url"].startswith(f"{instance.sim_url}/checkout/")
    page = httpx.get(deposit["checkout_url"], timeout=10)
    assert page.status_code == 200
    assert f'action="/checkout/{deposit["psp_reference"]}/approve"' in page.text  # what step 3's curl posts to

    # 3. Approved as the page's button does.
    assert session.step(3) == ["200"]

    # 4. Credited by the worker: 1500.00 USD available.
    state, wallets = session.step(4)
    assert state == "succeeded"
    assert _wallet(wallets, "USD") == ("1500.00", "0.00")

    # 5. Withdrawing 1200.00 waits for an operator.
    assert session.step(5) == ["pending_review"]

    # 6. The operator is created on the command line, sees it in the queue and approves it.
    created, queue, approved = session.step(6)
    assert re.fullmatch(r"created operator ops@example\.com with id [0-9a-f-]{36}", created)
    assert [(w["amount"], w["state"]) for w in queue["data"]] == [("1200.00", "pending_review")]
    assert (approved["id"], approved["state"]) == (queue["data"][0]["id"], "approved")

    # 7. Paid through the simulator: 300.00 USD left, nothing held.
    state, wallets = session.step(7)
    assert state == "succeeded"
    assert _wallet(wallets, "USD") == ("300.00", "0.00")
    session.done()


def _trading(session: Session) -> None:
    assert session.step(0) == []

    # 1. An IB and an admin; the IB's plan: 30% of its clients' fees.
    created, plan = session.step(1)
    assert re.fullmatch(r"created admin admin@example\.com with id [0-9a-f-]{36}", created)
    assert (plan["kind"], plan["levels"]) == ("percent_of_fee", [3000])

    # 2. The IB's code; the referred client and the other one; the IB's referrals: the first only.
    code, referred, other, referrals = session.step(2)
    assert (code["code"], code["active"]) == ("IB-ALICE", True)
    assert referred["email"] == "grace@example.com"
    assert other["email"] == "bob@example.com"
    assert [(r["email"], r["code"]) for r in referrals["referrals"]] == [("grace@example.com", "IB-ALICE")]

    # 3. Both deposits credited.
    assert session.step(3) == ["succeeded", "succeeded"]

    # 4. The watcher's subscriptions: each channel's snapshot (empty), then its "subscribed".
    subscribed = session.step(4)
    assert sorted((m["type"], m["channel"]) for m in subscribed) == [
        ("snapshot", "book"),
        ("snapshot", "trades"),
        ("subscribed", "book"),
        ("subscribed", "trades"),
    ]
    for channel in ("book", "trades"):
        kinds = [m["type"] for m in subscribed if m["channel"] == channel]
        assert kinds == ["snapshot", "subscribed"], f"{channel}: {subscribed}"
    book = next(m for m in subscribed if m["type"] == "snapshot" and m["channel"] == "book")
    trades = next(m for m in subscribed if m["type"] == "snapshot" and m["channel"] == "trades")
    assert (book["instrument"], book["bids"], book["asks"], trades["trades"]) == ("EUR-USD", [], [], [])

    # 5. The offer rests, the bid fills against it; the WebSocket shows the delta, the trade and the
    #    delta that empties the level, in that order and chained by sequence; then the balances.
    sell, buy, rested, trade, emptied, buyer, seller = session.step(5)
    assert (sell["side"], sell["status"], sell["fills"]) == ("sell", "open", [])
    assert (buy["side"], buy["status"], buy["filled_quantity"]) == ("buy", "filled", "1000.00")
    [fill] = buy["fills"]
    assert (fill["price"], fill["quantity"], fill["liquidity"], fill["fee"]) == ("1.10000", "1000.00", "taker", "2.20")
    assert (rested["type"], rested["prev_sequence"]) == ("delta", book["sequence"])
    assert rested["changes"] == [["sell", "1.10000", "1000.00", 1]]
    assert (trade["type"], trade["price"], trade["quantity"], trade["side"]) == ("trade", "1.10000", "1000.00", "buy")
    assert (emptied["type"], emptied["prev_sequence"]) == ("delta", rested["sequence"])
    assert ["sell", "1.10000", "0.00", 0] in emptied["changes"]
    assert rested["sequence"] < trade["sequence"] <= emptied["sequence"]
    assert _wallet(buyer, "EUR") == ("1000.00", "0.00")
    assert _wallet(buyer, "USD") == ("397.80", "0.00")  # 1500.00 - 1100.00 - 2.20 taker fee
    assert _wallet(seller, "EUR") == ("0.00", "0.00")
    assert _wallet(seller, "USD") == ("1098.90", "0.00")  # 1100.00 - 1.10 maker fee

    # 6. The IB's 30% of the buyer's 2.20 fee, accrued by the worker (the seller has no IB).
    amount, commissions = session.step(6)
    assert amount == "0.66"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert [(c["key"], c["asset"], c["amount"], c["accruals"]) for c in commissions["lines"]] == [
        (today, "USD", "0.66", 1)
    ]

    # 7. Paid out into the IB's wallet: one payout of 0.66 USD for one accrual.
    paid, wallets, payouts = session.step(7)
    assert paid["through"] == today
    assert [(p["asset"], p["amount_minor"], p["accruals"]) for p in paid["payouts"]] == [("USD", 66, 1)]
    assert _wallet(wallets, "USD") == ("0.66", "0.00")
    assert [(p["asset"], p["amount"], p["accruals"]) for p in payouts["payouts"]] == [("USD", "0.66", 1)]
    assert payouts["payouts"][0]["id"] == paid["payouts"][0]["id"]
    session.done()


def _what_you_get(instance: Instance) -> None:
    """Every address in README's "What you get" table answers on the running instance."""
    readme = README.read_text()
    table = readme[readme.index("## What you get") : readme.index("## Architecture")]
    paths = re.findall(r"^\| `(/[a-z/._]+)` \|", table, flags=re.MULTILINE)
    assert {"/api/openapi.json", "/api/docs", "/livez", "/readyz", "/metrics"} <= set(paths)
    for path in paths:
        assert httpx.get(instance.url + path, timeout=10).status_code == 200, path
    sim = SIM_PORT_IN_README.search(table)
    assert sim is not None, "the table names the simulator's address"
    assert sim.group(1).rstrip("/") == Settings.model_fields["psp_sim_url"].default  # where make up starts it
    index = httpx.get(f"{instance.sim_url}/", timeout=10)
    assert index.status_code == 200
    assert index.json()["service"] == "bourse-psp-sim"


@pytest.mark.timeout(600)  # one bourse up, two walkthroughs, and a dozen argon2 sign-ins on a shared machine
def test_the_readme_walkthroughs_run_as_written_one_after_the_other(tmp_path: Path) -> None:
    walkthroughs = walkthrough_steps(README.read_text())
    assert list(walkthroughs) == ["deposits", "trading"]
    directory = tmp_path / "checkout"
    directory.mkdir()
    with bourse_up(directory) as instance:
        _what_you_get(instance)
        with Shell(instance.cwd, instance.env, tmp_path / "steps") as shell:
            _deposits(Session(shell, walkthroughs["deposits"]), instance)
        with Shell(instance.cwd, instance.env, tmp_path / "steps") as shell:
            _trading(Session(shell, walkthroughs["trading"]))
        # What the walkthroughs did left the ledger whole.
        verified = run_bourse("ledger", "verify", env=instance.env, cwd=instance.cwd)
        assert verified.returncode == 0, verified.stdout + verified.stderr


# -- The extraction itself, on README texts of our own ------------------------------------


def _readme(*blocks: str, heading: str = "### Walkthrough: demo") -> str:
    return f"# Demo\n\n{heading}\n\n" + "\n\n".join(blocks) + "\n\n## Next\n"


def test_steps_are_split_at_their_numbered_comments_across_blocks() -> None:
    readme = _readme(
        "<!-- walkthrough: demo -->\n```sh\nB=x\n\n# 1. One.\necho 1\n# 2. Two.\necho 2\n```",
        "Prose in between.",
        "<!-- walkthrough: demo -->\n```sh\n# 3. Three.\necho 3\n```",
    )
    steps = walkthrough_steps(readme)["demo"]
    assert [(s.number, s.text) for s in steps] == [
        (0, "B=x\n\n"),
        (1, "# 1. One.\necho 1\n"),
        (2, "# 2. Two.\necho 2\n"),
        (3, "# 3. Three.\necho 3\n"),
    ]


@pytest.mark.parametrize(
    ("readme", "problem"),
    [
        (_readme("<!-- walkthrough: demo -->\nSome prose.\n```sh\n# 1. One.\n```"), "not followed by"),
        (_readme("<!-- walkthrough: demo -->\n```sh\n# 1. One.\n```", "```sh\n# 2. Two.\n```"), "no walkthrough"),
        (_readme("<!-- walkthrough: demo -->\n```sh\n# 1. One.\n# 3. Three.\n```"), "numbered [1, 3]"),
        (
            _readme("<!-- walkthrough: demo -->\n```sh\n# 1. One.\n```", "<!-- walkthrough: demo -->\n```sh\nx=1\n```"),
            "starts before its step",
        ),
    ],
    ids=["marker-without-block", "unmarked-block", "gap-in-steps", "unnumbered-later-block"],
)
def test_a_walkthrough_that_would_go_untested_is_refused(readme: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        walkthrough_steps(readme)


def test_sh_blocks_outside_walkthrough_sections_need_no_marker() -> None:
    readme = _readme("```sh\nmake up\n```", heading="## Quick start")
    assert walkthrough_steps(readme) == {}


def test_the_walkthroughs_never_create_the_same_account_twice() -> None:
    """They run one after the other on one `make up`: a second registration of an email is 409 email_taken."""
    emails: list[str] = []
    for steps in walkthrough_steps(README.read_text()).values():
        for step in steps:
            emails += re.findall(r'auth/register.*?\n?.*?"email": "([^"]+)"', step.text)
            emails += re.findall(r"users create --email (\S+)", step.text)
    assert emails, "the walkthroughs create accounts"
    assert sorted(emails) == sorted(set(emails)), emails


def test_outputs_decode_json_answers_printed_back_to_back_and_keep_text_lines() -> None:
    printed = '{"a": 1}{"b": [2]}\nsucceeded\n200\n{\n  "c": 3\n}\n[1, 2]\n{not json\n'
    assert outputs(printed) == [{"a": 1}, {"b": [2]}, "succeeded", "200", {"c": 3}, [1, 2], "{not json"]
