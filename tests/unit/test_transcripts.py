"""The worker's record of what it published, for replays after a coordinator restart or
a lost checkpoint: *accepted*, the text from a chunk on in checkpoints, the final event."""

from farm_protocol.payloads import MAX_CHECKPOINT_CHARS, JobAccepted, JobCheckpoint, JobDone
from fleet_worker.transcripts import Transcripts


def accepted(job: str, attempt: int) -> JobAccepted:
    return JobAccepted(job_id=job, attempt=attempt, session_id="s")


def test_a_replay_is_accepted_then_the_text_from_a_chunk_then_the_final_event() -> None:
    t = Transcripts()
    known = t.start(accepted("j", 1))
    known.texts.extend(f"t{seq} " for seq in range(4))
    events = t.replay("j", 1, 2) or []
    assert events[0] == accepted("j", 1)
    (checkpoint,) = [e for e in events if isinstance(e, JobCheckpoint)]
    assert (checkpoint.from_seq, checkpoint.texts) == (2, ["t2 ", "t3 "])
    done = JobDone(job_id="j", attempt=1, chunks=4, chars=12, sha256="0" * 64)
    known.final = done
    assert t.replay("j", 1, 4) == [accepted("j", 1), done]  # nothing after chunk 3


def test_a_long_text_is_replayed_in_checkpoints_that_each_fit_a_message() -> None:
    t = Transcripts()
    known = t.start(accepted("j", 1))
    piece = "x" * (MAX_CHECKPOINT_CHARS // 3)
    known.texts.extend([piece] * 10)
    checkpoints = [e for e in t.replay("j", 1, 0) or [] if isinstance(e, JobCheckpoint)]
    assert len(checkpoints) > 1
    assert all(sum(map(len, c.texts)) <= MAX_CHECKPOINT_CHARS for c in checkpoints)
    # one after the other, every chunk once
    assert [c.from_seq for c in checkpoints] == [0, 3, 6, 9]
    assert [text for c in checkpoints for text in c.texts] == [piece] * 10


def test_unknown_jobs_and_other_attempts_are_not_replayed() -> None:
    t = Transcripts(max_jobs=2)
    t.start(accepted("a", 1))
    t.start(accepted("a", 2))  # a new attempt replaces the old one
    assert t.replay("a", 1, 0) is None
    assert t.replay("a", 2, 0) is not None
    t.start(accepted("b", 1))
    t.start(accepted("c", 1))  # the oldest job is forgotten
    assert t.replay("a", 2, 0) is None
    assert t.replay("nobody", 1, 0) is None
