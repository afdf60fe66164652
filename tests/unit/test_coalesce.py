"""The token coalescing rule."""

import pytest

from fleet_worker.coalesce import Coalescer


def test_cuts_at_sentence_delimiters() -> None:
    c = Coalescer(max_delay_s=10, max_chars=100)
    assert c.add("Hello", now=0) is None
    assert c.add(" world.", now=0.001) == "Hello world."
    assert c.add(" Next,", now=0.002) == " Next,"


def test_cuts_at_max_chars() -> None:
    c = Coalescer(max_delay_s=10, max_chars=10)
    assert c.add("abcdef", now=0) is None
    assert c.add("ghijk", now=0) == "abcdefghijk"


def test_cuts_after_max_delay() -> None:
    c = Coalescer(max_delay_s=0.05, max_chars=100)
    assert c.add("slow", now=0.0) is None
    assert c.wait_s(now=0.02) == pytest.approx(0.03)
    assert c.due(now=0.04) is None
    assert c.add(" token", now=0.06) == "slow token"
    assert c.wait_s() is None
    assert c.take() is None


def test_concatenation_is_exact() -> None:
    c = Coalescer(max_delay_s=1, max_chars=7)
    pieces = ["a", "b. ", "cdefghij", "\n", "k"]
    out = [x for p in pieces if (x := c.add(p, now=0))]
    out.append(c.take() or "")
    assert "".join(out) == "".join(pieces)
