"""``bourse psp reconcile`` and ``bourse psp connectors``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta

import click

from bourse.cli_support import load_cli_settings, open_cli_database

EXIT_MISMATCHES = 1


def _yesterday() -> date:
    return (datetime.now(UTC) - timedelta(days=1)).date()


@click.group()
def psp() -> None:
    """Payment providers: reconciliation and the active connectors."""


@psp.command()
def connectors() -> None:
    """List the active connectors and what each supports."""
    from bourse.psp.registry import connectors as active

    for name, connector in active(load_cli_settings()).items():
        click.echo(f"{name}: {', '.join(sorted(c.value for c in connector.capabilities))}")


@psp.command()
@click.option("--connector", "connector_name", required=True, help="The connector to reconcile, e.g. simulator.")
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="The UTC day, YYYY-MM-DD (default: yesterday).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile(connector_name: str, day: datetime | None, as_json: bool) -> None:
    """Match the provider's transactions of a day with ours and store the report.

    Exits 1 when the report has any mismatch, 2 on bad input.
    """
    from bourse.db import unit_of_work
    from bourse.errors import BourseError
    from bourse.payments import reconcile as recon
    from bourse.payments.connectors import connector_named
    from bourse.psp.connectors.base import Capability

    settings = load_cli_settings()
    the_day = day.date() if day is not None else _yesterday()
    try:
        connector = connector_named(settings, connector_name, Capability.transactions)
    except BourseError as exc:
        raise click.BadParameter(f"{exc.code}: {exc.detail}", param_hint="--connector") from None
    database = open_cli_database(settings)
    try:
        with unit_of_work(database) as session:
            report = recon.reconcile(session, connector, the_day, actor="cli:psp-reconcile")
            result = {
                "id": str(report.id),
                "connector": report.connector,
                "day": report.day.isoformat(),
                "psp_transactions": report.psp_transactions,
                "matched": report.matched,
                "mismatch_count": report.mismatch_count,
                "missing_here": report.missing_here,
                "missing_at_psp": report.missing_at_psp,
                "mismatches": report.mismatches,
            }
    except BourseError as exc:
        click.echo(f"error: {exc.code}: {exc.detail}", err=True)
        sys.exit(2)
    finally:
        database.dispose()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"{result['connector']} {result['day']}: {result['psp_transactions']} provider transactions,"
            f" {result['matched']} matched, {result['mismatch_count']} mismatches (report {result['id']})"
        )
        for section in ("missing_here", "missing_at_psp", "mismatches"):
            for line in result[section]:  # type: ignore[attr-defined]
                click.echo(
                    f"  {section}: {line['kind']} {line['psp_reference']} {line['amount']} {line['currency']}"
                    f" - {line['problem']}"
                )
    if report.mismatch_count:
        sys.exit(EXIT_MISMATCHES)
