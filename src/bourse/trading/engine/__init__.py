"""The matching engine: pure, deterministic, no I/O, no database, no web framework.

:mod:`~bourse.trading.engine.vocabulary` is what the engine speaks (a ``NewOrder`` in,
events out, ``RestingOrder`` views), in integers: prices in ticks, quantities in lots.
:mod:`~bourse.trading.engine.book` is the price-time priority book of one instrument
that matches them. The rest of :mod:`bourse.trading` converts to and from decimals,
locks, settles and publishes around it (docs/decisions/0011-matching-single-writer.md).
"""
