"""Admission by expected wait: a model's queue holds only what its workers can start
within the horizon (a fraction of the queue deadline), by Little's law; one request more
is refused at once with the time the queue will have room again."""

import pytest

from coordinator.errors import Busy
from coordinator.jobs.capacity import RETRY_MAX_S, FleetCapacity
from coordinator.workers.presence import WorkerLoad


def worker(
    worker_id: str, capacity: int, active: int = 0, models: tuple[str, ...] = ("llama3:latest",)
) -> WorkerLoad:
    return WorkerLoad(worker_id, frozenset(models), frozenset(), capacity, active)


def test_a_model_the_fleet_has_no_slots_for_gets_no_bound_yet() -> None:
    """Whether a worker serves it at all is the store's to check, in the request's
    transaction (tests/store/test_admission_by_wait.py): the snapshot here may be older."""
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20)
    limit = capacity.limit("llama3")
    assert (limit.model, limit.most_queued) == ("llama3", None)
    limit.check(10_000)


def test_the_queue_holds_what_the_fleet_starts_within_the_horizon() -> None:
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20, admit_fraction=0.75)
    capacity.observe_fleet([worker("a", 2)])
    limit = capacity.limit("llama3")
    # no job has finished: 20 s each on 2 slots is one start every 10 s; 90 s of horizon
    assert (limit.seconds_per_start, limit.most_queued) == (10.0, 2 + 9)
    capacity.observe_service_times({"llama3:latest": 1.5})  # as fast as jobs really are
    limit = capacity.limit("llama3:latest")
    assert (limit.seconds_per_start, limit.most_queued) == (0.75, 2 + 120)
    limit.check(121)  # room for one more
    with pytest.raises(Busy) as refused:
        limit.check(122)
    assert refused.value.retry_after_s == 1
    assert str(refused.value) == "the farm is busy: try again in about 1 s"
    assert refused.value.reason == "queue_full"


def test_a_refusal_says_when_there_will_be_room() -> None:
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20, admit_fraction=0.75)
    capacity.observe_fleet([worker("a", 1, active=1), worker("b", 1, active=1)])
    capacity.observe_service_times({"llama3:latest": 20.0})
    limit = capacity.limit("llama3")
    assert limit.most_queued == 9  # nothing free; one start every 10 s
    with pytest.raises(Busy) as refused:
        limit.check(12)  # 4 to start before there is room: about 40 s
    assert refused.value.retry_after_s == 40
    with pytest.raises(Busy) as far:
        limit.check(1000)
    assert far.value.retry_after_s == RETRY_MAX_S


def test_a_model_without_its_own_times_is_judged_by_the_others() -> None:
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20)
    capacity.observe_service_times({"llama3:latest": 2.0, "mistral:latest": 4.0})
    assert capacity.service_s("codellama:7b") == 3.0
    assert capacity.service_s("mistral") == 4.0


def test_refused_clients_are_given_return_times_one_start_apart() -> None:
    """They come back one by one as the queue drains, not all in the same second."""
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20)
    capacity.observe_fleet([worker("a", 2, active=2)])
    capacity.observe_service_times({"llama3:latest": 4.0})  # a start every 2 s
    refusal = Busy("the farm is busy: try again in about 1 s", 1, "queue_full")
    given = [capacity.spread("llama3", refusal, now=100.0).retry_after_s for _ in range(5)]
    assert given == [1, 3, 5, 7, 9]
    again = capacity.spread("llama3", refusal, now=105.0)  # 5 s later: the queue moved on
    assert again.retry_after_s == 6
    assert str(again) == "the farm is busy: try again in about 6 s"
    other = Busy("no worker serves llama3 right now", 30, "no_worker")
    assert capacity.spread("llama3", other, now=105.0) is other


def test_while_the_service_time_is_a_guess_no_return_is_promised_far_away() -> None:
    capacity = FleetCapacity(queue_timeout_s=120, reply_estimate_s=20)
    capacity.observe_fleet([worker("a", 1, active=1)])  # a start every 20 s, by the guess
    refusal = Busy("the farm is busy: try again in about 1 s", 1, "queue_full")
    given = [capacity.spread("llama3", refusal, now=0.0).retry_after_s for _ in range(3)]
    assert given == [1, 2, 2]
