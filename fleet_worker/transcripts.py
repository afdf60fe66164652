"""What the worker published for its recent jobs, so it can publish it again.

Chunks are QoS1, but a subscriber acknowledges a message as soon as it arrives: a
coordinator killed before writing what it received has lost it for good as far as the
broker is concerned. The coordinator then asks the worker to replay the job from the
first chunk it is missing; this keeps the events of the last ``max_jobs`` job attempts.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

from farm_protocol.payloads import JobAccepted, JobChunk, JobDone, JobFailed

Event = JobAccepted | JobChunk | JobDone | JobFailed


@dataclass(slots=True)
class Transcript:
    attempt: int
    chunks: list[JobChunk] = field(default_factory=list)
    final: JobDone | JobFailed | None = None


class Transcripts:
    def __init__(self, max_jobs: int = 256) -> None:
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Transcript] = OrderedDict()

    def record(self, event: Event) -> None:
        known = self._jobs.get(event.job_id)
        if known is None or known.attempt != event.attempt:
            known = self._jobs[event.job_id] = Transcript(event.attempt)
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)
        match event:
            case JobChunk():
                known.chunks.append(event)
            case JobDone() | JobFailed():
                known.final = event

    def replay(self, job_id: str, attempt: int, from_seq: int) -> list[Event] | None:
        """The events to publish again, or None if this attempt is not known here."""
        known = self._jobs.get(job_id)
        if known is None or known.attempt != attempt:
            return None
        events: list[Event] = [c for c in known.chunks if c.seq >= from_seq]
        if known.final is not None:
            events.append(known.final)
        return events
