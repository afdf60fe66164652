"""CoDel-style load shedding: a standing queue (its head older than the target for a whole
interval) refuses new requests at once; a draining one takes them again."""

import pytest

from coordinator.errors import Busy
from coordinator.jobs.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_brief_spike_is_not_shed_but_a_standing_queue_is() -> None:
    clock = Clock()
    gate = Admission(target_s=5, interval_s=2, clock=clock)
    gate.observe({"llama3:latest": 6.0})  # above target: the interval starts
    gate.check("llama3")
    clock.now += 1
    gate.observe({"llama3:latest": 7.0})
    gate.check("llama3")  # not for a whole interval yet
    clock.now += 1.5
    gate.observe({"llama3:latest": 8.5})
    with pytest.raises(Busy, match=r"try again in 4 s") as refused:
        gate.check("llama3")
    assert refused.value.retry_after_s == 4
    gate.check("mistral")  # other models are not affected
    assert gate.shedding() == {"llama3:latest": 8.5}


def test_shedding_stops_as_soon_as_the_queue_drains_below_target() -> None:
    clock = Clock()
    gate = Admission(target_s=5, interval_s=0, clock=clock)
    gate.observe({"llama3:latest": 9.0})
    gate.observe({"llama3:latest": 9.0})
    with pytest.raises(Busy):
        gate.check("llama3:latest")
    gate.observe({"llama3:latest": 1.0})
    gate.check("llama3")
    gate.observe({"llama3:latest": 9.0})
    gate.observe({"llama3:latest": 9.0})
    with pytest.raises(Busy):
        gate.check("llama3")
    gate.observe({})  # the queue emptied
    gate.check("llama3")
    assert gate.shedding() == {}
