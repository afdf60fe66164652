"""Nothing the coordinator publishes is over the broker's packet limit: an assignment
leaves out its oldest history turns to fit (the system prompt and the question stay), and
the outbox refuses anything larger rather than be disconnected for it, again and again."""

import asyncio
import time

from coordinator.jobs.queue import ASSIGNMENT_BYTES, fit_assignment
from farm_protocol.codec import encode
from farm_protocol.payloads import MAX_PACKET_BYTES, ChatTurn, JobAssignment
from farm_runtime.outbox import Outbox

TURN = "w" * 90_000  # near the 100,000-character limit of one turn


def assignment(turns: list[ChatTurn]) -> JobAssignment:
    return JobAssignment(
        job_id="j", thread_id="t", attempt=1, model="llama3", messages=turns, issued_at=time.time()
    )


def test_a_short_assignment_is_sent_as_it_is() -> None:
    short = assignment([ChatTurn(role="user", content="hi")])
    assert fit_assignment(short) is short


def test_a_long_history_loses_its_oldest_turns_to_fit() -> None:
    history = [ChatTurn(role="system", content="be brief")]
    history += [ChatTurn(role="user" if n % 2 else "assistant", content=TURN) for n in range(59)]
    history.append(ChatTurn(role="user", content="the question"))
    long = assignment(history)
    assert len(encode(long)) > ASSIGNMENT_BYTES
    fitted = fit_assignment(long)
    assert fitted is not None
    assert len(encode(fitted)) <= ASSIGNMENT_BYTES
    assert fitted.messages[0].content == "be brief"
    assert fitted.messages[-1].content == "the question"
    assert fitted.messages[1:-1] == history[-len(fitted.messages) + 1 : -1]  # the newest kept


def test_an_assignment_that_cannot_fit_is_refused() -> None:
    # a question alone over the limit (it cannot happen through the APIs' own limits)
    huge = assignment([ChatTurn.model_construct(role="user", content="q" * MAX_PACKET_BYTES)])
    assert fit_assignment(huge) is None


def test_the_outbox_never_takes_a_payload_over_the_limit() -> None:
    async def put() -> int:
        outbox = Outbox()
        await outbox.put("farm/v2/threads/t/events", b"x" * (MAX_PACKET_BYTES + 1))
        await outbox.put("farm/v2/threads/t/events", b"small")
        return outbox.pending()

    assert asyncio.run(put()) == 1
