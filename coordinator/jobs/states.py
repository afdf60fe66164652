"""The states of a job, and what each means for its reply.

    queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
       ^         |           |
       +---------+-----------+  (re-queued only while no token has reached the user)

``attempt`` is the fencing token: a claim increments it, and every later write names the
attempt and worker it belongs to, so a late message from an earlier attempt never lands.
"""

from enum import StrEnum

from farm_protocol.chat import MessageState


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    ASSIGNED = "assigned"  # claimed for a worker, which has not said "accepted" yet
    RUNNING = "running"  # the worker accepted it; text may be streaming
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def reply_state(self) -> MessageState:
        """The state a job's reply takes when the job ends in this state."""
        return _REPLY_STATE[self]


ACTIVE = (JobState.ASSIGNED, JobState.RUNNING)  # held by a worker
LIVE = (JobState.QUEUED, *ACTIVE)  # not ended: counts against its owner's limits
FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED)

_REPLY_STATE = {
    JobState.SUCCEEDED: MessageState.DONE,
    JobState.FAILED: MessageState.FAILED,
    JobState.TIMED_OUT: MessageState.TIMED_OUT,
    JobState.CANCELLED: MessageState.CANCELLED,
}


def sql_list(states: tuple[JobState, ...]) -> str:
    """``('assigned', 'running')``: states for an ``IN`` in a hand-written statement."""
    return "(" + ", ".join(f"'{s.value}'" for s in states) + ")"
