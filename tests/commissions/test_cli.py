"""``bourse commissions payout`` as a real process on PostgreSQL: pays once, then nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bourse.db import Database
from bourse.settings import Settings
from tests.commissions.support import client_takes, hierarchy, payable, run_accrual
from tests.support.ledger import balance, verify
from tests.support.processes import clean_env, run_bourse
from tests.support.services import make_settings

pytestmark = pytest.mark.process


def test_the_payout_command_pays_each_ib_once(postgres_url: str) -> None:
    settings: Settings = make_settings(postgres_url)
    database = Database.from_settings(settings)
    try:
        h = hierarchy(database)
        trade = client_takes(database, h)
        run_accrual(database, settings, trade.id)
        env = clean_env(BOURSE_DATABASE_URL=postgres_url)
        today = datetime.now(UTC).date().isoformat()

        first = run_bourse("commissions", "payout", "--date", today, env=env)
        assert first.returncode == 0, first.stderr
        paid = {p["ib_user_id"]: p for p in json.loads(first.stdout)["payouts"]}
        assert paid[str(h.sub.id)]["amount_minor"] == 311
        assert paid[str(h.ib.id)]["amount_minor"] == 155
        assert balance(database, h.sub.id, h.quote) == 311
        assert payable(database, h.sub.id, h.quote) == 0

        second = run_bourse("commissions", "payout", "--date", today, env=env)
        assert second.returncode == 0, second.stderr
        assert str(h.sub.id) not in {p["ib_user_id"] for p in json.loads(second.stdout)["payouts"]}
        assert balance(database, h.sub.id, h.quote) == 311

        bad = run_bourse("commissions", "payout", "--date", "2026-13-40", env=env)
        assert bad.returncode == 2
        assert "--date" in bad.stderr
        assert verify(database).ok
    finally:
        database.dispose()
