"""The wire contract: topics carry the worker id, ids are validated, bad payloads raise."""

import pytest

from farm_protocol import topics
from farm_protocol.codec import CONTROL, JOB_EVENT, decode, encode
from farm_protocol.errors import PayloadError, TopicError
from farm_protocol.models import display_model, normalize_model
from farm_protocol.payloads import Drain, JobChunk, JobDone


def test_every_worker_topic_names_the_worker() -> None:
    for build in (
        topics.worker_status,
        topics.worker_heartbeat,
        topics.worker_assign,
        topics.worker_control,
    ):
        assert "/workers/w1/" in build("w1")
    assert topics.job_events("w1", "t1", "j1") == "farm/v2/workers/w1/jobs/t1/j1"
    assert topics.job_progress("w1", "t1", "j1") == "farm/v2/workers/w1/progress/t1/j1"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "x" * 65, "$sys", "é"])
def test_ids_that_could_escape_a_topic_level_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.worker_assign(bad)


def test_topics_parse_back() -> None:
    parsed = topics.parse_worker_topic(topics.job_events("w-1", "t-1", "abc"))
    assert (parsed.worker_id, parsed.leaf, parsed.thread_id, parsed.job_id) == (
        "w-1",
        "jobs",
        "t-1",
        "abc",
    )
    assert topics.parse_thread_topic(topics.thread_events("t1")) == "t1"
    with pytest.raises(TopicError):
        topics.parse_worker_topic("farm/v2/workers/w1/jobs/a")
    with pytest.raises(TopicError):
        topics.parse_worker_topic("farm/v2/workers/w1/jobs/a/b/c")


def test_job_events_round_trip_by_kind() -> None:
    chunk = JobChunk(job_id="j", attempt=1, seq=3, text="hi")
    assert decode(JOB_EVENT, encode(chunk)) == chunk
    assert isinstance(decode(CONTROL, encode(Drain())), Drain)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"kind": "chunk"}',
        b'{"kind": "nope"}',
        b"[]",
        b'{"kind":"chunk","job_id":"j","attempt":1,"seq":-1,"text":""}',
    ],
)
def test_malformed_payloads_raise_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(JOB_EVENT, raw)


def test_done_requires_a_real_digest() -> None:
    with pytest.raises(PayloadError):
        decode(
            JOB_EVENT,
            b'{"kind":"done","job_id":"j","attempt":1,"chunks":1,"chars":1,"sha256":"nope"}',
        )
    done = JobDone(job_id="j", attempt=1, chunks=0, chars=0, sha256="0" * 64)
    assert decode(JOB_EVENT, encode(done)) == done


def test_model_names_follow_ollama() -> None:
    assert normalize_model("llama3") == "llama3:latest"
    assert normalize_model("codellama:7b") == "codellama:7b"
    assert normalize_model("library/llama3") == "library/llama3:latest"
    assert display_model("llama3:latest") == "llama3"


def test_a_topics_subject_keys_the_log_lines_about_it() -> None:
    assert topics.subject(topics.job_events("w1", "t1", "j1")) == "w1"
    assert topics.subject(topics.thread_events("t1")) == "t1"
    assert topics.subject("elsewhere") == "elsewhere"
