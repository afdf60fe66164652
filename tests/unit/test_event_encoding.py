"""Every browser watching a thread gets the same event object from the bridge; its JSON
is made once and reused for the others, never for another event."""

from farm_protocol.browser import ChunkEvent
from webapp.thread_socket import _ENCODED_KEPT, _Encoder


def chunk(seq: int, text: str = "hi") -> ChunkEvent:
    return ChunkEvent(job_id="j" * 32, attempt=1, seq=seq, text=text)


def test_one_event_is_encoded_once_for_every_browser() -> None:
    encoder, event = _Encoder(), chunk(0)
    first = encoder.json(event)
    assert first == event.model_dump_json()
    assert encoder.json(event) is first  # the same string, not encoded again


def test_an_id_reused_by_another_event_is_not_mistaken_for_it() -> None:
    encoder, gone, new = _Encoder(), chunk(1, "old"), chunk(2, "new")
    encoder._kept[id(new)] = (gone, gone.model_dump_json())  # as if ``new`` reused its id
    assert encoder.json(new) == new.model_dump_json()


def test_only_the_latest_events_are_kept() -> None:
    encoder = _Encoder()
    events = [chunk(n) for n in range(_ENCODED_KEPT + 10)]
    for event in events:
        encoder.json(event)
    assert len(encoder._kept) == _ENCODED_KEPT
    assert id(events[0]) not in encoder._kept or encoder._kept[id(events[0])][0] is not events[0]
    assert encoder._kept[id(events[-1])][0] is events[-1]
