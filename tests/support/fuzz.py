"""Shared Hypothesis settings and strategies for the parser fuzz tests.

Each property runs a bounded number of examples (a few hundred), so the whole
fuzz set costs seconds, not minutes, in CI. Crashes found are kept as explicit
``@example`` regressions next to the property that found them.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as HTTP headers carry it: servers decode header bytes as Latin-1, so any of the
# 256 code points can arrive, controls included.
header_text = st.text(st.characters(max_codepoint=0xFF), max_size=80)

# Any JSON value, with the awkward scalars: huge and negative integers, NUL, lone
# surrogates written as escapes, floats, deep-ish nesting.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "\x00", "usd", "USD", "dep_1", "\ud800", "x" * 300])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    """JSON bytes as a provider would send them; lone surrogates go out as escapes."""
    return json.dumps(value).encode("utf-8")
