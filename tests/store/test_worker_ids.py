"""A new worker's id, made from its name, when another add takes that id at the worst
moment: after this add found it free, before this add stored it (two admins adding
"GPU box" at once, from two processes: tests/store/test_workers_cli.py runs that race
for real, where it is not certain to hit this moment)."""

import peewee as pw
import pytest

from coordinator.errors import Conflict
from coordinator.keys.hashing import hash_key
from coordinator.workers.registry import WorkerRegistry


class RacedRegistry(WorkerRegistry):
    """A registry another admin beats, ``times`` times, right after each free id is
    chosen: that admin stores a worker with the very id this one just found free."""

    def __init__(self, db: pw.Database, times: int) -> None:
        super().__init__(db, grace_s=10)
        self.times = times

    def _free_id(self, name: str) -> str:
        found = super()._free_id(name)
        if self.times > 0:
            self.times -= 1
            WorkerRegistry(self.db, grace_s=10).insert(found, name, hash_key("other"), "")
        return found


@pytest.mark.parametrize("times", [1, 3])
def test_an_id_taken_after_it_was_found_free_is_chosen_again(db: pw.Database, times: int) -> None:
    registry = RacedRegistry(db, times)
    info, _ = registry.add("GPU box")
    taken = ["gpu-box"] + [f"gpu-box-{n}" for n in range(2, times + 1)]
    assert info.id == f"gpu-box-{times + 1}"
    assert sorted(w.id for w in registry.list_workers()) == sorted([*taken, info.id])


def test_a_chosen_id_that_is_taken_is_refused_at_once(db: pw.Database) -> None:
    registry = WorkerRegistry(db, grace_s=10)
    registry.add("GPU box", worker_id="box-1")
    with pytest.raises(Conflict, match="box-1 already exists"):
        registry.add("another box", worker_id="box-1")
