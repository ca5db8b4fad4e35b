"""Instruments: the seeds, the service's rules and refusals, the database's CHECKs,
exact notionals, the row lock, and the ``bourse instruments`` command.

The databases are shared by the whole run, so every test that writes lists its
own instrument on a fresh pair of assets and never changes the seeded markets.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bourse.assets import service as assets
from bourse.assets.models import Asset
from bourse.db import Database, unit_of_work
from bourse.errors import BourseError
from bourse.migrations import upgrade
from bourse.trading import instruments as service
from bourse.trading.models import Instrument, InstrumentStatus
from tests.support.processes import clean_env, run_bourse
from tests.support.services import make_settings
from tests.support.waiting import wait_until


def new_pair(database: Database, base_scale: int = 8, quote_scale: int = 2) -> tuple[str, str]:
    """Two new assets, so the instrument on them is this test's alone."""
    base, quote = f"B{uuid.uuid4().hex[:8].upper()}", f"Q{uuid.uuid4().hex[:8].upper()}"
    with unit_of_work(database) as session:
        assets.create_asset(session, code=base, scale=base_scale, name="Test base")
        assets.create_asset(session, code=quote, scale=quote_scale, name="Test quote")
    return base, quote


def definition(base: str, quote: str, **changes: Any) -> dict[str, Any]:
    """A valid definition at price_scale 2 for an 8-decimal base: tick 0.05, lot 0.001, 0.002 to 10."""
    return {
        "symbol": f"{base}-{quote}",
        "base_asset": base,
        "quote_asset": quote,
        "price_scale": 2,
        "tick_size": "0.05",
        "lot_size": "0.001",
        "min_quantity": "0.002",
        "max_quantity": "10",
        "price_band_bps": 500,
        **changes,
    }


def listed(database: Database) -> str:
    """A new open instrument; its symbol."""
    base, quote = new_pair(database)
    with unit_of_work(database) as session:
        return service.create_instrument(session, **definition(base, quote)).symbol


def code_of(call: Any) -> str:
    with pytest.raises(BourseError) as caught:
        call()
    return caught.value.code


def offline(
    *,
    price_scale: int = 2,
    tick: int = 5,
    lot: int = 100_000,
    smallest: int = 200_000,
    largest: int = 10**9,
    band: int = 1_000,
    last: int | None = None,
    base_scale: int = 8,
    quote_scale: int = 2,
    status: InstrumentStatus = InstrumentStatus.open,
) -> Instrument:
    """An instrument that never touches a database, for the pure order-rule functions."""
    return Instrument(
        symbol="BTC-USD",
        base_asset="BTC",
        quote_asset="USD",
        price_scale=price_scale,
        tick_size=tick,
        lot_size=lot,
        min_quantity=smallest,
        max_quantity=largest,
        price_band_bps=band,
        status=status,
        last_price=last,
        sequence=0,
        base=Asset(code="BTC", scale=base_scale, name="Bitcoin", active=True),
        quote=Asset(code="USD", scale=quote_scale, name="US dollar", active=True),
    )


# -- Seeds ---------------------------------------------------------------------------------


def test_the_migration_seeds_three_open_markets(database: Database) -> None:
    with unit_of_work(database) as session:
        seeds = {symbol: service.get_instrument(session, symbol) for symbol in ("BTC-USD", "ETH-USD", "EUR-USD")}
        shown = {
            symbol: (
                service.format_price(i, i.tick_size),
                service.format_quantity(i, i.lot_size),
                service.format_quantity(i, i.min_quantity),
                service.format_quantity(i, i.max_quantity),
            )
            for symbol, i in seeds.items()
        }
    btc, eth, eur = seeds["BTC-USD"], seeds["ETH-USD"], seeds["EUR-USD"]
    assert (btc.base_asset, btc.quote_asset, btc.price_scale, btc.tick_size) == ("BTC", "USD", 2, 1)
    assert (btc.lot_size, btc.min_quantity, btc.max_quantity, btc.price_band_bps) == (10_000, 10_000, 10**10, 1_000)
    assert (eth.lot_size, eth.min_quantity, eth.max_quantity, eth.price_band_bps) == (10**5, 10**5, 10**11, 1_000)
    assert (eur.price_scale, eur.lot_size, eur.min_quantity, eur.max_quantity) == (5, 100, 100, 10**8)
    assert eur.price_band_bps == 500
    assert shown == {
        "BTC-USD": ("0.01", "0.00010000", "0.00010000", "100.00000000"),
        "ETH-USD": ("0.01", "0.00100000", "0.00100000", "1000.00000000"),
        "EUR-USD": ("0.00001", "1.00", "1.00", "1000000.00"),
    }
    for seed in seeds.values():
        assert seed.status is InstrumentStatus.open
        assert seed.last_price is None
        assert seed.sequence == 0


# -- Creating, reading, changing -------------------------------------------------------------


def test_create_then_get_and_list(database: Database) -> None:
    base, quote = new_pair(database)
    with unit_of_work(database) as session:
        created = service.create_instrument(session, **definition(base, quote))
    assert created.symbol == f"{base}-{quote}"
    assert (created.tick_size, created.lot_size, created.min_quantity, created.max_quantity) == (
        5,
        100_000,
        200_000,
        10**9,
    )
    assert created.status is InstrumentStatus.open
    assert created.sequence == 0
    assert (created.base_scale, created.quote_scale) == (8, 2)  # usable after its transaction
    with unit_of_work(database) as session:
        found = service.get_instrument(session, created.symbol)
        everything = [i.symbol for i in service.list_instruments(session)]
        halted = service.list_instruments(session, status=InstrumentStatus.halted)
    assert found.price_band_bps == 500
    assert {"BTC-USD", "ETH-USD", "EUR-USD", created.symbol} <= set(everything)
    assert everything == sorted(everything)
    assert created.symbol not in {i.symbol for i in halted}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"symbol": "BTCUSD"}, "instrument_symbol_invalid"),
        ({"symbol": "btc-usd"}, "instrument_symbol_invalid"),
        ({"symbol": "ABCDEFGHIJKLM-USD"}, "instrument_symbol_invalid"),
        ({"symbol": "ETH-USD"}, "instrument_symbol_invalid"),  # it must name its own assets
        ({"base_asset": "NOPE1"}, "unknown_asset"),
        ({"quote_asset": "NOPE1"}, "unknown_asset"),
        ({"price_scale": 9}, "instrument_price_scale_invalid"),
        ({"price_scale": -1}, "instrument_price_scale_invalid"),
        ({"price_scale": True}, "instrument_price_scale_invalid"),
        ({"tick_size": "0.001"}, "amount_precision"),
        ({"tick_size": "0"}, "amount_not_positive"),
        ({"tick_size": "1e-2"}, "amount_invalid"),
        ({"lot_size": "0"}, "amount_not_positive"),
        ({"min_quantity": "-1"}, "amount_not_positive"),
        ({"max_quantity": "0.000000001"}, "amount_precision"),
        ({"min_quantity": "0.0015"}, "instrument_quantity_limits_invalid"),
        ({"max_quantity": "10.0005"}, "instrument_quantity_limits_invalid"),
        ({"min_quantity": "11"}, "instrument_quantity_limits_invalid"),
        ({"price_band_bps": 0}, "instrument_price_band_invalid"),
        ({"price_band_bps": 10_001}, "instrument_price_band_invalid"),
    ],
)
def test_create_refusals_have_their_own_codes(database: Database, changes: dict[str, Any], code: str) -> None:
    base, quote = new_pair(database)
    with unit_of_work(database) as session:
        assert code_of(lambda: service.create_instrument(session, **definition(base, quote, **changes))) == code
        assert session.get(Instrument, f"{base}-{quote}") is None


def test_create_refuses_one_asset_twice_an_inactive_asset_and_a_second_listing(database: Database) -> None:
    base, quote = new_pair(database)
    with unit_of_work(database) as session:
        same = definition(base, base, symbol=f"{base}-{base}")
        assert code_of(lambda: service.create_instrument(session, **same)) == "instrument_same_assets"
    with unit_of_work(database) as session:
        assets.set_asset_active(session, quote, active=False)
    with unit_of_work(database) as session:
        assert code_of(lambda: service.create_instrument(session, **definition(base, quote))) == "asset_inactive"
    with unit_of_work(database) as session:
        assets.set_asset_active(session, quote, active=True)
    with unit_of_work(database) as session:
        service.create_instrument(session, **definition(base, quote))
    with unit_of_work(database) as session:
        assert code_of(lambda: service.create_instrument(session, **definition(base, quote))) == "instrument_exists"


def test_update_changes_the_rules_but_never_the_scale_or_the_assets(database: Database) -> None:
    symbol = listed(database)
    with unit_of_work(database) as session:
        changed = service.update_instrument(
            session, symbol, tick_size="0.10", lot_size="0.002", min_quantity="0.004", price_band_bps=250
        )
    assert (changed.tick_size, changed.lot_size, changed.min_quantity, changed.max_quantity) == (
        10,
        200_000,
        400_000,
        10**9,
    )
    assert changed.price_band_bps == 250
    with unit_of_work(database) as session:
        # Sending the current value of an immutable field is not a change.
        same = service.update_instrument(session, symbol, price_scale=2, base_asset=symbol.split("-")[0])
        assert same.tick_size == 10
    for immutable in ({"price_scale": 3}, {"base_asset": "BTC"}, {"quote_asset": "EUR"}):
        with unit_of_work(database) as session:
            refused = code_of(lambda immutable=immutable: service.update_instrument(session, symbol, **immutable))
            assert refused == "instrument_immutable_field"
    with unit_of_work(database) as session:
        # A new lot must divide the limits in force after the change.
        assert code_of(lambda: service.update_instrument(session, symbol, lot_size="0.003")) == (
            "instrument_quantity_limits_invalid"
        )
        assert code_of(lambda: service.update_instrument(session, symbol, tick_size="0")) == "amount_not_positive"
        assert code_of(lambda: service.update_instrument(session, symbol, price_band_bps=0)) == (
            "instrument_price_band_invalid"
        )
        assert code_of(lambda: service.update_instrument(session, "NOPE-USD", tick_size="1")) == "unknown_instrument"
    with unit_of_work(database) as session:
        after = service.get_instrument(session, symbol)
        assert (after.price_scale, after.tick_size, after.lot_size, after.price_band_bps) == (2, 10, 200_000, 250)


def test_halt_and_resume_are_idempotent(database: Database) -> None:
    symbol = listed(database)
    with unit_of_work(database) as session:
        assert service.halt(session, symbol, "  exchange maintenance  ", "user:op").status is InstrumentStatus.halted
    with unit_of_work(database) as session:
        again = service.halt(session, symbol, "still maintenance", "user:op")
        assert again.status is InstrumentStatus.halted
        assert code_of(lambda: service.check_open(again)) == "market_halted"
    with unit_of_work(database) as session:
        assert service.resume(session, symbol, "maintenance over", "user:op").status is InstrumentStatus.open
        assert service.resume(session, symbol, "maintenance over", "user:op").status is InstrumentStatus.open
    with unit_of_work(database) as session:
        opened = service.get_instrument(session, symbol)
        assert opened.status is InstrumentStatus.open
        service.check_open(opened)
        assert code_of(lambda: service.halt(session, symbol, "  ", "user:op")) == "reason_required"
        assert code_of(lambda: service.halt(session, symbol, "x" * 501, "user:op")) == "reason_required"
        assert code_of(lambda: service.halt(session, "NOPE-USD", "because", "user:op")) == "unknown_instrument"
        assert code_of(lambda: service.resume(session, "not a symbol", "because", "user:op")) == "unknown_instrument"


def test_get_and_lock_refuse_unknown_symbols_with_404(database: Database) -> None:
    with unit_of_work(database) as session:
        for symbol in ("NOPE-USD", "btc-usd", "", "X" * 200):
            with pytest.raises(BourseError) as caught:
                service.get_instrument(session, symbol)
            assert (caught.value.code, caught.value.status_code) == ("unknown_instrument", 404)
            assert code_of(lambda symbol=symbol: service.lock_instrument(session, symbol)) == "unknown_instrument"
        assert service.lock_instrument(session, "BTC-USD").symbol == "BTC-USD"


# -- The database's own checks -------------------------------------------------------------

_ROW = {
    "base": "BTC",
    "quote": "USD",
    "symbol": None,
    "price_scale": 2,
    "tick_size": 1,
    "lot_size": 10,
    "min_quantity": 10,
    "max_quantity": 100,
    "price_band_bps": 100,
    "status": "open",
    "last_price": None,
    "sequence": 0,
}


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"base": "b1"}, "symbol_format"),
        ({"base": "B"}, "symbol_format"),
        ({"symbol": "{base}-EUR"}, "symbol_names_assets"),
        ({"quote": "{base}", "symbol": "{base}-{base}"}, "assets_differ"),
        ({"price_scale": 9}, "price_scale_range"),
        ({"tick_size": 0}, "tick_size_positive"),
        ({"lot_size": -10}, "lot_size_positive"),
        ({"min_quantity": 15}, "min_quantity_on_lot"),
        ({"min_quantity": 0}, "min_quantity_on_lot"),
        ({"max_quantity": 105}, "max_quantity_on_lot"),
        ({"min_quantity": 200}, "min_not_above_max"),
        ({"price_band_bps": 0}, "price_band_range"),
        ({"price_band_bps": 10_001}, "price_band_range"),
        ({"status": "closed"}, "status"),
        ({"last_price": 0}, "last_price_positive"),
        ({"sequence": -1}, "sequence_not_negative"),
    ],
)
def test_the_database_refuses_rows_that_break_the_rules(
    database: Database, changes: dict[str, Any], constraint: str
) -> None:
    # The base asset is inserted raw, so even a malformed code gets in; the
    # transaction is rolled back either way.
    row = {**_ROW, "base": f"C{uuid.uuid4().hex[:6].upper()}", **changes}
    row["quote"] = row["quote"].format(base=row["base"])
    row["symbol"] = (row["symbol"] or "{base}-{quote}").format(base=row["base"], quote=row["quote"])
    session = database.sessions()
    try:
        session.execute(
            text("INSERT INTO assets (code, scale, name, active, created_at) VALUES (:code, 8, 'raw', true, :now)"),
            {"code": row["base"], "now": "2026-11-26 00:00:00+00:00"},
        )
        with pytest.raises(IntegrityError, match=f"ck_instruments_{constraint}"):
            session.execute(
                text(
                    "INSERT INTO instruments (symbol, base_asset, quote_asset, price_scale, tick_size, lot_size, "
                    "min_quantity, max_quantity, price_band_bps, status, last_price, sequence, created_at, "
                    "updated_at) VALUES (:symbol, :base, :quote, :price_scale, :tick_size, :lot_size, "
                    ":min_quantity, :max_quantity, :price_band_bps, :status, :last_price, :sequence, :now, :now)"
                ),
                {**row, "now": "2026-11-26 00:00:00+00:00"},
            )
    finally:
        session.rollback()
        session.close()


def test_a_valid_raw_row_is_accepted_so_the_refusals_above_are_real(database: Database) -> None:
    unique = f"C{uuid.uuid4().hex[:6].upper()}"
    session = database.sessions()
    try:
        session.execute(
            text("INSERT INTO assets (code, scale, name, active, created_at) VALUES (:code, 8, 'raw', true, :now)"),
            {"code": unique, "now": "2026-11-26 00:00:00+00:00"},
        )
        session.execute(
            text(
                "INSERT INTO instruments (symbol, base_asset, quote_asset, price_scale, tick_size, lot_size, "
                "min_quantity, max_quantity, price_band_bps, status, created_at, updated_at) "
                "VALUES (:symbol, :base, 'USD', 2, 1, 10, 10, 100, 100, 'halted', :now, :now)"
            ),
            {"symbol": f"{unique}-USD", "base": unique, "now": "2026-11-26 00:00:00+00:00"},
        )
        sequence = session.execute(
            text("SELECT sequence FROM instruments WHERE symbol = :s"), {"s": f"{unique}-USD"}
        ).scalar_one()
        assert sequence == 0  # the server default
    finally:
        session.rollback()
        session.close()


# -- An order's price and quantity (pure) ----------------------------------------------------


def test_parse_price_reads_the_price_scale_and_wants_whole_ticks() -> None:
    instrument = offline(tick=5)  # 0.05 USD
    assert service.parse_price(instrument, "65000.05") == 6_500_005
    assert service.parse_price(instrument, "0.10") == 10
    assert service.parse_price(instrument, "7") == 700
    for text_, code in [
        ("65000.01", "price_off_tick"),
        ("65000.051", "amount_precision"),
        ("0", "amount_not_positive"),
        ("-1.00", "amount_not_positive"),
        ("1e5", "amount_invalid"),
        (" 1.00", "amount_invalid"),
    ]:
        assert code_of(lambda text_=text_: service.parse_price(instrument, text_)) == code, text_


def test_parse_quantity_reads_the_base_scale_and_enforces_lot_and_limits() -> None:
    instrument = offline(lot=100_000, smallest=200_000, largest=10**9)  # lot 0.001, 0.002 to 10
    assert service.parse_quantity(instrument, "0.002") == 200_000
    assert service.parse_quantity(instrument, "10") == 10**9
    assert service.parse_quantity(instrument, "1.234") == 123_400_000
    for text_, code in [
        ("0.0025", "quantity_off_lot"),
        ("0.001", "quantity_too_small"),
        ("10.001", "quantity_too_large"),
        ("0", "amount_not_positive"),
        ("-0.002", "amount_not_positive"),
        ("0.000000001", "amount_precision"),
        ("abc", "amount_invalid"),
    ]:
        assert code_of(lambda text_=text_: service.parse_quantity(instrument, text_)) == code, text_


def test_order_refusals_are_422_and_a_halt_is_409() -> None:
    with pytest.raises(BourseError) as caught:
        service.parse_quantity(offline(), "0.0025")
    assert caught.value.status_code == 422
    with pytest.raises(BourseError) as caught:
        service.check_open(offline(status=InstrumentStatus.halted))
    assert (caught.value.code, caught.value.status_code) == ("market_halted", 409)
    service.check_open(offline())


def test_the_price_band_is_exact_and_inclusive() -> None:
    service.check_price_band(offline(last=None), 1)  # no trade yet: no reference, no band
    service.check_price_band(offline(last=None), 10**15)
    instrument = offline(last=10_000, band=1_000)  # 100.00, 10%
    for inside in (9_000, 10_000, 11_000):
        service.check_price_band(instrument, inside)
    for outside in (8_999, 11_001, 1, 10**12):
        assert code_of(lambda outside=outside: service.check_price_band(instrument, outside)) == "price_outside_band"
    odd = offline(last=333, band=1)  # 0.01% of 3.33 is 0.0333 ticks: only the last price itself fits
    service.check_price_band(odd, 333)
    assert code_of(lambda: service.check_price_band(odd, 334)) == "price_outside_band"
    assert code_of(lambda: service.check_price_band(odd, 332)) == "price_outside_band"


def test_format_price_and_quantity() -> None:
    assert service.format_price(offline(), 6_500_005) == "65000.05"
    assert service.format_price(offline(price_scale=5), 108_123) == "1.08123"
    assert service.format_price(offline(price_scale=0), 42) == "42"
    assert service.format_quantity(offline(), 10_000) == "0.00010000"


# -- Notional ------------------------------------------------------------------------------


def test_notional_examples() -> None:
    btc = offline(price_scale=2, base_scale=8, quote_scale=2)
    # 0.5 BTC at 65,000.05 USD is 32,500.025 USD: 3,250,002 cents down, 3,250,003 up.
    assert service.notional(btc, 6_500_005, 50_000_000, 8, 2) == 3_250_002
    assert service.notional(btc, 6_500_005, 50_000_000, 8, 2, round_up=True) == 3_250_003
    # An exact amount is the same both ways.
    assert service.notional(btc, 6_500_000, 50_000_000, 8, 2) == 3_250_000
    assert service.notional(btc, 6_500_000, 50_000_000, 8, 2, round_up=True) == 3_250_000
    # A tiny trade is worth less than a cent: the seller gets 0, the buyer must hold 1.
    assert service.notional(btc, 1, 1, 8, 2) == 0
    assert service.notional(btc, 1, 1, 8, 2, round_up=True) == 1
    assert service.notional(btc, 0, 50_000_000, 8, 2, round_up=True) == 0
    # EUR-USD at 1.08123 (price_scale 5), 1,000 EUR (scale 2): 1,081.23 USD exactly.
    eur = offline(price_scale=5, base_scale=2, quote_scale=2)
    assert service.notional(eur, 108_123, 100_000, 2, 2) == 108_123
    with pytest.raises(ValueError, match="non-negative integers"):
        service.notional(btc, -1, 1, 8, 2)
    with pytest.raises(ValueError, match="non-negative integers"):
        service.notional(btc, 1, quantity=True, base_scale=8, quote_scale=2)


_SCALE = st.integers(min_value=0, max_value=8)
_INT64 = st.integers(min_value=0, max_value=2**63 - 1)


@given(price_scale=_SCALE, base_scale=_SCALE, quote_scale=_SCALE, price=_INT64, quantity=_INT64)
def test_notional_is_the_exact_product_rounded_once(
    price_scale: int, base_scale: int, quote_scale: int, price: int, quantity: int
) -> None:
    instrument = offline(price_scale=price_scale, base_scale=base_scale, quote_scale=quote_scale)
    exact = Fraction(price, 10**price_scale) * Fraction(quantity, 10**base_scale) * 10**quote_scale  # quote minor units
    down = service.notional(instrument, price, quantity, base_scale, quote_scale)
    up = service.notional(instrument, price, quantity, base_scale, quote_scale, round_up=True)
    assert down == exact.numerator // exact.denominator
    assert down <= exact < down + 1
    assert up - 1 < exact <= up
    assert up == down + (0 if exact.denominator == 1 else 1)


@given(
    price_scale=_SCALE,
    base_scale=_SCALE,
    quote_scale=_SCALE,
    tick=st.integers(min_value=1, max_value=10**6),
    lot=st.integers(min_value=1, max_value=10**9),
    ticks=st.integers(min_value=0, max_value=10**9),
    lots=st.integers(min_value=0, max_value=10**9),
    round_up=st.booleans(),
)
def test_book_units_convert_exactly(
    price_scale: int,
    base_scale: int,
    quote_scale: int,
    tick: int,
    lot: int,
    ticks: int,
    lots: int,
    round_up: bool,
) -> None:
    instrument = offline(price_scale=price_scale, base_scale=base_scale, quote_scale=quote_scale, tick=tick, lot=lot)
    price = service.ticks_to_price(instrument, ticks)
    quantity = service.lots_to_quantity(instrument, lots)
    assert service.price_to_ticks(instrument, price) == ticks
    assert service.quantity_to_lots(instrument, quantity) == lots
    assert service.book_notional(instrument, round_up=round_up)(ticks, lots) == service.notional(
        instrument, price, quantity, base_scale, quote_scale, round_up=round_up
    )


def test_book_units_refuse_what_is_not_whole_ticks_or_lots() -> None:
    instrument = offline(tick=5, lot=100_000)
    assert code_of(lambda: service.price_to_ticks(instrument, 7)) == "price_off_tick"
    assert code_of(lambda: service.quantity_to_lots(instrument, 150_000)) == "quantity_off_lot"


# -- The row lock --------------------------------------------------------------------------


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[Database]:
    database = Database.from_settings(make_settings(postgres_url))
    yield database
    database.dispose()


def _wait_until_blocked_on_a_lock(database: Database, pids: queue.Queue[int]) -> None:
    """Return once PostgreSQL reports the backend ``pids`` names as waiting for a lock."""
    pid = pids.get(timeout=20)
    with unit_of_work(database) as watcher:
        wait_until(
            lambda: (
                watcher.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar_one_or_none()
                == "Lock"
            ),
            f"backend {pid} to wait for a lock",
            timeout=20,
            interval=0.01,
        )


def test_lock_instrument_makes_a_second_writer_wait_on_postgres(postgres_database: Database) -> None:
    database = postgres_database
    symbol = listed(database)
    quote = symbol.split("-")[1]
    other_base, _ = new_pair(database)
    with unit_of_work(database) as session:
        other = service.create_instrument(session, **definition(other_base, quote)).symbol
    first_locked, release = threading.Event(), threading.Event()
    pids: queue.Queue[int] = queue.Queue()
    happened: list[str] = []  # in the order the two writers got there

    def first() -> None:
        with unit_of_work(database) as session:
            service.lock_instrument(session, symbol).sequence += 1
            session.flush()
            first_locked.set()
            assert release.wait(20)
            happened.append("first commits")

    def second() -> int:
        assert first_locked.wait(20)
        with unit_of_work(database) as session:
            pids.put(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
            instrument = service.lock_instrument(session, symbol)
            happened.append("second locked")
            seen = instrument.sequence
            instrument.sequence += 1
        return seen

    with ThreadPoolExecutor(max_workers=2) as pool:
        first_done, second_done = pool.submit(first), pool.submit(second)
        try:
            assert first_locked.wait(20)
            # PostgreSQL itself reports the second transaction blocked: it is waiting, not slow.
            _wait_until_blocked_on_a_lock(database, pids)
            assert happened == []
            # Only the instrument row is locked: not its assets, not another instrument on the same quote.
            with unit_of_work(database) as session:
                session.execute(text("SET LOCAL lock_timeout = '2s'"))
                assert service.lock_instrument(session, other).symbol == other
                locked = text("SELECT code FROM assets WHERE code IN (:base, :quote) FOR UPDATE NOWAIT")
                assert len(session.execute(locked, {"base": symbol.split("-")[0], "quote": quote}).all()) == 2
        finally:
            release.set()
        first_done.result(timeout=30)
        seen = second_done.result(timeout=30)
    assert happened == ["first commits", "second locked"]
    assert seen == 1  # it saw the first writer's committed change
    with unit_of_work(database) as session:
        assert service.get_instrument(session, symbol).sequence == 2


def test_lock_instrument_rereads_a_row_the_session_already_holds(database: Database) -> None:
    symbol = listed(database)
    session = database.sessions()
    try:
        stale = service.get_instrument(session, symbol)
        session.commit()
        with unit_of_work(database) as writer:
            service.lock_instrument(writer, symbol).sequence = 7
        assert stale.sequence == 0
        assert service.lock_instrument(session, symbol) is stale
        assert stale.sequence == 7
    finally:
        session.rollback()
        session.close()


# -- The command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path: Path = tmp_path_factory.mktemp("instruments-cli") / "bourse.db"
    url = f"sqlite:///{path}"
    upgrade(make_settings(url))
    return clean_env(BOURSE_DATABASE_URL=url)


@pytest.mark.process
def test_cli_lists_the_seeded_instruments(cli_env: dict[str, str]) -> None:
    as_json = run_bourse("instruments", "list", "--json", env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["symbol"]: row for row in json.loads(as_json.stdout)}
    assert set(rows) == {"BTC-USD", "ETH-USD", "EUR-USD"}
    assert rows["EUR-USD"]["tick_size"] == "0.00001"
    assert rows["BTC-USD"]["lot_size"] == "0.00010000"
    assert rows["BTC-USD"]["status"] == "open"
    assert rows["BTC-USD"]["last_price"] is None


@pytest.mark.process
def test_cli_create_halt_resume_and_refusals(cli_env: dict[str, str]) -> None:
    create = ["instruments", "create", "--symbol", "BTC-EUR", "--base", "BTC", "--quote", "EUR", "--price-scale", "2"]
    create += ["--tick", "0.05", "--lot", "0.001", "--min", "0.001", "--max", "50", "--band-bps", "750"]
    created = run_bourse(*create, env=cli_env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("BTC-EUR")
    assert "tick=0.05 lot=0.00100000 min=0.00100000 max=50.00000000 band=750bps" in created.stdout
    again = run_bourse(*create, env=cli_env)
    assert again.returncode == 2
    assert "bourse: instrument_exists:" in again.stderr

    halted = run_bourse("instruments", "halt", "BTC-EUR", "--reason", "a test halt", env=cli_env)
    assert halted.returncode == 0, halted.stderr
    assert "BTC-EUR      halted" in halted.stdout
    assert "a test halt" in halted.stderr  # the log line says why ...
    assert "cli:" in halted.stderr  # ... and who
    resumed = run_bourse("instruments", "resume", "BTC-EUR", "--reason", "test over", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "BTC-EUR      open" in resumed.stdout

    unknown = run_bourse("instruments", "halt", "NOPE-USD", "--reason", "because", env=cli_env)
    assert unknown.returncode == 2
    assert "bourse: unknown_instrument:" in unknown.stderr
