"""Hypothesis strategies and checks shared by the fuzz tests."""

from collections.abc import Callable
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

# JSON values orjson can round-trip exactly (no NaN/inf, 64-bit integers).
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)


def result_or_reason(call: Callable[[], T], error: type[Exception]) -> T | None:
    """``call()``'s result, or None when it raised ``error`` with a reason that can be logged."""
    try:
        return call()
    except error as exc:
        reason = str(exc)
    assert reason, f"{error.__name__} without a reason"
    return None
