"""``bourse commissions payout``: pay introducing brokers their accrued commissions now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click

from bourse.cli_support import load_cli_settings, open_cli_database


@click.group()
def commissions() -> None:
    """Introducing-broker commissions."""


@commissions.command()
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Pay commissions on trades up to the end of this UTC day, YYYY-MM-DD (default: yesterday).",
)
def payout(day: datetime | None) -> None:
    """Pay every IB their unpaid commissions, one payout per IB and asset, and print them as JSON.

    Running it again pays nothing new.
    """
    from bourse.commissions import service
    from bourse.db import unit_of_work

    through = day.date() if day is not None else (datetime.now(UTC) - timedelta(days=1)).date()
    database = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(database) as session:
            paid = service.pay_out_all(session, through, actor="cli:commissions-payout")
            result = [
                {
                    "id": str(p.id),
                    "ib_user_id": str(p.ib_user_id),
                    "asset": p.asset,
                    "amount_minor": p.amount,
                    "accruals": p.accruals,
                    "entry_id": str(p.entry_id),
                }
                for p in paid
            ]
    finally:
        database.dispose()
    click.echo(json.dumps({"through": through.isoformat(), "payouts": result}, indent=2))
