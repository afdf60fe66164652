"""What the worker published for its recent jobs, so it can publish it again.

Progress is QoS1, but a subscriber acknowledges a message as soon as it arrives: a
coordinator killed before writing what it received has lost it for good as far as the
broker is concerned. A coordinator then asks the worker to replay the job from the first
chunk it is missing; this keeps the texts and final event of the last ``max_jobs`` job
attempts.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

from farm_protocol.payloads import (
    MAX_CHECKPOINT_CHARS,
    JobAccepted,
    JobCheckpoint,
    JobDone,
    JobFailed,
)

Progress = JobAccepted | JobCheckpoint | JobDone | JobFailed


@dataclass(slots=True)
class Transcript:
    accepted: JobAccepted
    texts: list[str] = field(default_factory=list)
    final: JobDone | JobFailed | None = None


class Transcripts:
    def __init__(self, max_jobs: int = 256) -> None:
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Transcript] = OrderedDict()

    def start(self, accepted: JobAccepted) -> Transcript:
        """A new job attempt: its chunks' texts and final event are kept in what this
        returns (the emitter appends to it as it publishes)."""
        known = self._jobs[accepted.job_id] = Transcript(accepted)
        self._jobs.move_to_end(accepted.job_id)
        while len(self._jobs) > self.max_jobs:
            self._jobs.popitem(last=False)
        return known

    def replay(self, job_id: str, attempt: int, from_seq: int) -> list[Progress] | None:
        """The progress to publish again, or None if this attempt is not known here:
        *accepted*, the text from chunk ``from_seq`` on in checkpoints of at most about
        MAX_CHECKPOINT_CHARS each, and the final event if there is one."""
        known = self._jobs.get(job_id)
        if known is None or known.accepted.attempt != attempt:
            return None
        events: list[Progress] = [known.accepted]
        start, size = from_seq, 0
        for seq in range(from_seq, len(known.texts) + 1):
            last = seq == len(known.texts)
            if seq > start and (last or size + len(known.texts[seq]) > MAX_CHECKPOINT_CHARS):
                events.append(
                    JobCheckpoint(
                        job_id=job_id,
                        attempt=attempt,
                        from_seq=start,
                        texts=known.texts[start:seq],
                    )
                )
                start, size = seq, 0
            if not last:
                size += len(known.texts[seq])
        if known.final is not None:
            events.append(known.final)
        return events
