"""Every browser watching a thread gets the same event object from the bridge; its JSON
(``wire``) is made once and reused for the others, and is the event's JSON exactly."""

import json

from farm_protocol.browser import ChunkEvent, MembersChanged, SnapshotEvent, ThreadChanged
from farm_protocol.chat import ThreadSnapshot, ThreadView


def chunk(seq: int, text: str = "hi") -> ChunkEvent:
    return ChunkEvent(job_id="j" * 32, attempt=1, seq=seq, text=text)


def test_one_event_is_encoded_once_for_every_browser() -> None:
    event = chunk(0)
    first = event.wire
    assert first == event.model_dump_json()
    assert event.wire is first  # the same string, not encoded again


def test_the_kept_json_is_no_part_of_the_event() -> None:
    event = chunk(1, 'say "hi"')
    sent = event.wire
    assert json.loads(sent) == {
        "type": "chunk",
        "job_id": "j" * 32,
        "attempt": 1,
        "seq": 1,
        "text": 'say "hi"',
    }
    assert event.model_dump_json() == sent  # not dumped with its own JSON inside
    assert event == chunk(1, 'say "hi"')  # and equal to one never sent


def test_each_event_has_its_own_json() -> None:
    events = [chunk(n, f"t{n}") for n in range(3)] + [
        MembersChanged(members=[]),
        ThreadChanged(thread=None),
    ]
    assert [json.loads(e.wire) for e in events] == [json.loads(e.model_dump_json()) for e in events]
    assert len({e.wire for e in events}) == len(events)


def test_a_snapshot_is_sent_as_its_json() -> None:
    view = ThreadView(
        thread_id="t" * 32, title="hello", description="", created_at=1.0, updated_at=2.0
    )
    snapshot = ThreadSnapshot(thread=view, messages=[])
    event = SnapshotEvent(**dict(snapshot))
    assert json.loads(event.wire)["type"] == "snapshot"
    assert event.wire == event.model_dump_json()
