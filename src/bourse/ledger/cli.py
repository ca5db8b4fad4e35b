"""``bourse ledger verify`` and ``bourse assets ...``."""

from __future__ import annotations

import json
import sys

import click

from bourse.cli_support import load_cli_settings, open_cli_database

EXIT_DISCREPANCIES = 1


@click.group()
def ledger() -> None:
    """Inspect the ledger."""


@ledger.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Discrepancies to print at most."
)
def verify(as_json: bool, limit: int) -> None:
    """Check every entry, balance, hold and hash chain. Exit 1 on any discrepancy."""
    from bourse.db import unit_of_work
    from bourse.ledger.verify import verify_ledger

    database = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(database) as session:
            report = verify_ledger(session, limit=limit)
    finally:
        database.dispose()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "postings": report.postings,
                    "accounts": report.accounts,
                    "holds": report.holds,
                    "total_discrepancies": report.total_discrepancies,
                    "discrepancies": [
                        {
                            "check": item.check,
                            "account_id": str(item.account_id) if item.account_id else None,
                            "entry_id": str(item.entry_id) if item.entry_id else None,
                            "detail": item.detail,
                        }
                        for item in report.discrepancies
                    ],
                },
                indent=2,
            )
        )
    else:
        for item in report.discrepancies:
            click.echo(item.describe())
        summary = (
            f"{report.entries} entries, {report.postings} postings, {report.accounts} accounts, {report.holds} holds"
        )
        if report.ok:
            click.echo(f"ledger verified: {summary}")
        else:
            shown = len(report.discrepancies)
            click.echo(
                f"ledger verification FAILED: {report.total_discrepancies} discrepancies "
                f"(first {shown} shown) in {summary}",
                err=True,
            )
    sys.exit(0 if report.ok else EXIT_DISCREPANCIES)


@click.group()
def assets() -> None:
    """List and manage assets (currencies and coins)."""


@assets.command("list")
def list_assets() -> None:
    """List every asset with its scale."""
    from bourse.assets.service import list_assets as query
    from bourse.db import unit_of_work

    database = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(database) as session:
            rows = [(a.code, a.scale, a.name, a.active) for a in query(session)]
    finally:
        database.dispose()
    for code, scale, name, active in rows:
        click.echo(f"{code:<12} scale={scale} {'active  ' if active else 'inactive'} {name}")


def _change(action: str, **kwargs: object) -> None:
    from bourse.assets import service
    from bourse.db import unit_of_work
    from bourse.errors import BourseError

    database = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(database) as session:
            if action == "create":
                asset = service.create_asset(session, **kwargs)  # type: ignore[arg-type]
            else:
                asset = service.set_asset_active(session, str(kwargs["code"]), active=action == "activate")
            line = f"{asset.code} scale={asset.scale} {'active' if asset.active else 'inactive'}"
    except BourseError as exc:
        click.echo(f"bourse: {exc.code}: {exc.detail}", err=True)
        sys.exit(2)
    finally:
        database.dispose()
    click.echo(line)


@assets.command()
@click.option("--code", required=True, help="2 to 12 upper-case letters and digits, e.g. USDT.")
@click.option("--scale", type=click.IntRange(0, 8), required=True, help="Decimals; can never change later.")
@click.option("--name", required=True, help="A readable name.")
def create(code: str, scale: int, name: str) -> None:
    """Add an asset."""
    _change("create", code=code, scale=scale, name=name)


@assets.command()
@click.argument("code")
def deactivate(code: str) -> None:
    """Stop an asset taking new money; its balances and history stay."""
    _change("deactivate", code=code)


@assets.command()
@click.argument("code")
def activate(code: str) -> None:
    """Let an asset take new money again."""
    _change("activate", code=code)
