"""The worker's record of what it published, for replays after a coordinator restart."""

from farm_protocol.payloads import JobAccepted, JobChunk, JobDone
from fleet_worker.transcripts import Transcripts


def chunk(job: str, attempt: int, seq: int) -> JobChunk:
    return JobChunk(job_id=job, attempt=attempt, seq=seq, text=f"t{seq} ")


def test_replay_from_a_chunk_includes_the_final_event() -> None:
    t = Transcripts()
    t.record(JobAccepted(job_id="j", attempt=1, session_id="s"))
    for seq in range(4):
        t.record(chunk("j", 1, seq))
    assert [e.seq for e in t.replay("j", 1, 2) or [] if isinstance(e, JobChunk)] == [2, 3]
    done = JobDone(job_id="j", attempt=1, chunks=4, chars=12, sha256="0" * 64)
    t.record(done)
    assert (t.replay("j", 1, 4) or [])[-1] == done


def test_unknown_jobs_and_other_attempts_are_not_replayed() -> None:
    t = Transcripts(max_jobs=2)
    t.record(chunk("a", 1, 0))
    t.record(chunk("a", 2, 0))  # a new attempt replaces the old one
    assert t.replay("a", 1, 0) is None
    assert t.replay("a", 2, 0) is not None
    t.record(chunk("b", 1, 0))
    t.record(chunk("c", 1, 0))  # the oldest job is forgotten
    assert t.replay("a", 2, 0) is None
    assert t.replay("nobody", 1, 0) is None
