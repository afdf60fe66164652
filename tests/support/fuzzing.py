"""What the property-based fuzz tests share: their hypothesis settings, a strategy for
arbitrary JSON values, and one for ids in URL paths."""

from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def json_values(allow_nan: bool = False) -> st.SearchStrategy[Any]:
    """Any JSON value, nested a little (NaN and infinities only when asked for)."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=allow_nan, allow_infinity=allow_nan)
        | st.text(max_size=40),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def path_ids(*known: str) -> st.SearchStrategy[str]:
    """An id to put in a URL path: a real one, a well-formed one nobody has, a path
    traversal, one too long, or any text (escaped)."""
    return st.sampled_from([*known, "0" * 32, "..", "%2e%2e%2f", "x" * 300]) | st.text(
        max_size=40
    ).map(lambda t: quote(t, safe=""))
