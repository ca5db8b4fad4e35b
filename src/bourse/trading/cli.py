"""``bourse instruments ...``: list, create, halt and resume markets.

Refusals print ``bourse: <code>: <detail>`` and exit 2, as ``bourse assets`` does.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from bourse.cli_support import load_cli_settings, open_cli_database

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bourse.trading.models import Instrument

EXIT_REFUSED = 2


def _actor() -> str:
    """``cli:<os user>``: a command has no signed-in user, so the operating-system account stands in."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in a bare container
        return "cli:unknown"


def _describe(instrument: Instrument) -> dict[str, Any]:
    from bourse.trading.instruments import format_price, format_quantity

    return {
        "symbol": instrument.symbol,
        "base_asset": instrument.base_asset,
        "quote_asset": instrument.quote_asset,
        "price_scale": instrument.price_scale,
        "tick_size": format_price(instrument, instrument.tick_size),
        "lot_size": format_quantity(instrument, instrument.lot_size),
        "min_quantity": format_quantity(instrument, instrument.min_quantity),
        "max_quantity": format_quantity(instrument, instrument.max_quantity),
        "price_band_bps": instrument.price_band_bps,
        "status": instrument.status.value,
        "last_price": None if instrument.last_price is None else format_price(instrument, instrument.last_price),
        "sequence": instrument.sequence,
    }


def _line(row: dict[str, Any]) -> str:
    last = row["last_price"] or "-"
    return (
        f"{row['symbol']:<12} {row['status']:<6} tick={row['tick_size']} lot={row['lot_size']} "
        f"min={row['min_quantity']} max={row['max_quantity']} band={row['price_band_bps']}bps last={last}"
    )


def _run(work: Callable[[Session], Instrument | list[Instrument]]) -> list[dict[str, Any]]:
    """Run ``work`` in one transaction; print a refusal's code and exit 2 on a BourseError."""
    from bourse.db import unit_of_work
    from bourse.errors import BourseError

    database = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(database) as session:
            result = work(session)
            rows = [_describe(item) for item in (result if isinstance(result, list) else [result])]
    except BourseError as exc:
        click.echo(f"bourse: {exc.code}: {exc.detail}", err=True)
        sys.exit(EXIT_REFUSED)
    finally:
        database.dispose()
    return rows


@click.group()
def instruments() -> None:
    """List and manage trading instruments (markets such as BTC-USD)."""


@instruments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_instruments(as_json: bool) -> None:
    """List every instrument with its trading rules."""
    from bourse.trading import instruments as service

    rows = _run(service.list_instruments)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(_line(row))


@instruments.command()
@click.option("--symbol", required=True, help="BASE-QUOTE, e.g. BTC-EUR.")
@click.option("--base", "base_asset", required=True, help="The asset traded, e.g. BTC.")
@click.option("--quote", "quote_asset", required=True, help="The asset prices are in, e.g. EUR.")
@click.option("--price-scale", type=int, required=True, help="Decimals of a price, 0 to 8; can never change later.")
@click.option("--tick", required=True, help='The price increment in quote units, e.g. "0.01".')
@click.option("--lot", required=True, help='The quantity increment in base units, e.g. "0.0001".')
@click.option("--min", "min_quantity", required=True, help="The smallest order quantity, in base units.")
@click.option("--max", "max_quantity", required=True, help="The largest order quantity, in base units.")
@click.option("--band-bps", type=int, required=True, help="How far a limit price may be from the last price, 1-10000.")
def create(  # noqa: PLR0917 - one parameter per click option
    symbol: str,
    base_asset: str,
    quote_asset: str,
    price_scale: int,
    tick: str,
    lot: str,
    min_quantity: str,
    max_quantity: str,
    band_bps: int,
) -> None:
    """List a new instrument, open for trading."""
    from bourse.trading import instruments as service

    rows = _run(
        lambda session: service.create_instrument(
            session,
            symbol=symbol,
            base_asset=base_asset,
            quote_asset=quote_asset,
            price_scale=price_scale,
            tick_size=tick,
            lot_size=lot,
            min_quantity=min_quantity,
            max_quantity=max_quantity,
            price_band_bps=band_bps,
        )
    )
    click.echo(_line(rows[0]))


@instruments.command()
@click.argument("symbol")
@click.option("--reason", required=True, help="Why; logged with who halted it.")
def halt(symbol: str, reason: str) -> None:
    """Halt trading on SYMBOL (a halted instrument stays halted)."""
    from bourse.trading import instruments as service

    rows = _run(lambda session: service.halt(session, symbol, reason, _actor()))
    click.echo(_line(rows[0]))


@instruments.command()
@click.argument("symbol")
@click.option("--reason", required=True, help="Why; logged with who resumed it.")
def resume(symbol: str, reason: str) -> None:
    """Resume trading on SYMBOL (an open instrument stays open)."""
    from bourse.trading import instruments as service

    rows = _run(lambda session: service.resume(session, symbol, reason, _actor()))
    click.echo(_line(rows[0]))


def _parse_shards(text: str | None, count: int) -> list[int] | None:
    if text is None:
        return None
    try:
        shards = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        _refuse("invalid_shards", f"--shards takes shard numbers separated by commas, not {text!r}")
    if not shards or any(not 0 <= shard < count for shard in shards):
        _refuse("invalid_shards", f"--shards: each shard is one of 0..{count - 1} (BOURSE_MATCHER_SHARDS={count})")
    return shards


def _refuse(code: str, detail: str) -> NoReturn:
    click.echo(f"bourse: {code}: {detail}", err=True)
    sys.exit(EXIT_REFUSED)


@click.command()
@click.option(
    "--shards",
    default=None,
    help="The shards to lead (or stand by for), e.g. 0,2; all of 0..BOURSE_MATCHER_SHARDS-1 if left out.",
)
def matcher(shards: str | None) -> None:
    """Run the matcher: lead (or stand by for) instrument shards until SIGTERM, then exit 0.

    Each shard has one leader across every process that runs it; the others stand by and
    take over within a second of the leader's connection going. Serves /metrics on
    BOURSE_METRICS_PORT if set. Market data reaches the API processes' WebSockets through
    Redis (BOURSE_REDIS_URL).
    """
    import signal
    import threading

    from prometheus_client import start_http_server

    from bourse.cli_support import check_cli_database
    from bourse.redis_client import create_async_redis, create_redis
    from bourse.trading import fanout
    from bourse.trading.matcher import MatcherService, MatcherUnavailable

    settings = load_cli_settings(service=True)
    check_cli_database(settings)
    chosen = _parse_shards(shards, settings.matcher_shards)
    try:
        service = MatcherService(settings, shards=chosen)
    except MatcherUnavailable as exc:
        _refuse("matcher_unavailable", str(exc))
    hub = fanout.Hub()
    redis = create_redis(settings)
    if redis is not None:
        # Published, never subscribed: the API processes' relays deliver to their clients.
        hub.relay = fanout.RedisRelay(
            hub,
            redis,
            lambda: create_async_redis(settings, settings.redis_url or ""),
            prefix=settings.queue_redis_prefix,
            identity=settings.redis_url or "",
        )
    hub.start()
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.host)
    stopping = threading.Event()

    def stop(_signal: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.start()
    heartbeat = settings.matcher_heartbeat_path
    heartbeat.parent.mkdir(parents=True, exist_ok=True)
    try:
        while not stopping.wait(1.0):
            # `bourse healthcheck --matcher` reads the file's age: it stops moving when a
            # shard's thread dies or stops coming round its loop.
            if service.healthy(settings.heartbeat_max_age_seconds):
                heartbeat.touch()
    finally:
        service.stop()
        hub.stop()
        if redis is not None:
            redis.close()
