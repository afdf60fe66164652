"""Every publish the coordinator makes, in one place: to the webapps (a reply or a
thread's members changed) and to workers (an assignment, a cancel, a replay request, a
drain). All go through the outbox, so none is lost while the broker is away."""

from farm_protocol import topics
from farm_protocol.chat import MemberView, MessageView, ThreadView
from farm_protocol.codec import encode
from farm_protocol.payloads import (
    ControlMessage,
    Drain,
    FarmInfo,
    JobAssignment,
    JobCancel,
    MembersEvent,
    MessageEvent,
    ThreadChangedEvent,
)
from farm_protocol.version import PROTOCOL_VERSION
from farm_runtime.entry import version
from farm_runtime.outbox import Outbox


class Bus:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def message(self, view: MessageView) -> None:
        """A message was added or changed: the webapps pass it on to the thread's browsers."""
        await self.outbox.put(
            topics.thread_events(view.thread_id),
            encode(MessageEvent(message=view)),
            qos=topics.QOS_THREAD_EVENTS,
        )

    async def thread_changed(self, thread_id: str, thread: ThreadView | None) -> None:
        """A thread renamed or showing another branch (``thread``), or deleted (None)."""
        await self.outbox.put(
            topics.thread_events(thread_id),
            encode(ThreadChangedEvent(thread_id=thread_id, thread=thread)),
            qos=topics.QOS_THREAD_EVENTS,
        )

    async def members(self, thread_id: str, members: list[MemberView]) -> None:
        await self.outbox.put(
            topics.thread_events(thread_id),
            encode(MembersEvent(thread_id=thread_id, members=members)),
            qos=topics.QOS_THREAD_EVENTS,
        )

    async def assign(self, worker_id: str, assignment: JobAssignment) -> None:
        await self.outbox.put(
            topics.worker_assign(worker_id), encode(assignment), qos=topics.QOS_ASSIGN
        )

    async def control(self, worker_id: str, command: ControlMessage) -> None:
        await self.outbox.put(
            topics.worker_control(worker_id), encode(command), qos=topics.QOS_CONTROL
        )

    async def cancel(self, worker_id: str, job_id: str, attempt: int, reason: str) -> None:
        await self.control(worker_id, JobCancel(job_id=job_id, attempt=attempt, reason=reason))

    async def farm_info(self) -> None:
        """Say (retained) which protocol this farm speaks, for workers of any version."""
        info = FarmInfo(protocol=PROTOCOL_VERSION, version=version())
        await self.outbox.put(topics.FARM_INFO, encode(info), qos=topics.QOS_INFO, retain=True)

    async def clear_status(self, worker_id: str) -> None:
        """Remove a worker's retained status from the broker (an empty retained message):
        a revoked worker must not be listed online by whoever subscribes later."""
        await self.outbox.put(
            topics.worker_status(worker_id), b"", qos=topics.QOS_STATUS, retain=True
        )

    async def drain(self, worker_id: str, reason: str) -> None:
        await self.control(worker_id, Drain(reason=reason))
