"""Free ports: each pytest-xdist worker probes its own slice of the range, so that two
test processes never both take one port they each found free."""

from collections import deque

import pytest

from llama_farm import ports


def test_outside_xdist_the_whole_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert ports._slice(range(20000, 32768)) == range(20000, 32768)


def test_the_workers_slices_are_disjoint_and_in_range(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ports._pool()
    seen: set[int] = set()
    for n in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        share = ports._slice(pool)
        assert len(share) == len(pool) // 3
        assert set(share) <= set(pool)
        assert not seen & set(share)
        seen |= set(share)
        port = ports.free_port()
        assert port in share


def test_a_worker_beyond_the_count_falls_back_to_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert ports._slice(range(20000, 32768)) == range(20000, 32768)


def test_a_process_is_not_given_a_port_twice_before_binding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A farm asks for its simulator's, coordinator's and webapp's ports before it binds
    any: each must be another (seen: two of them given one port, "Address already in
    use"). Ten ports from a pool of ten, above the kernel's ephemeral range where no
    test listens, are all different."""
    monkeypatch.setattr(ports, "_pool", lambda: range(61000, 61010))
    monkeypatch.setattr(ports, "_slice", lambda pool: pool)
    monkeypatch.setattr(ports, "_GIVEN", deque(maxlen=1024))
    given = [ports.free_port() for _ in range(10)]
    assert sorted(given) == list(range(61000, 61010))


def test_a_reserved_port_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """``llama-farm dev --port P`` reserves P before it picks its services' ports: none of
    them is P, though P is free until its webapp binds it."""
    monkeypatch.setattr(ports, "_pool", lambda: range(61000, 61004))
    monkeypatch.setattr(ports, "_slice", lambda pool: pool)
    monkeypatch.setattr(ports, "_GIVEN", deque(maxlen=1024))
    ports.reserve(61002, 0)  # 0: no port asked for (picked later)
    given = [ports.free_port() for _ in range(4)]  # the fourth from outside the pool
    assert 61002 not in given
    assert {61000, 61001, 61003} <= set(given)
