"""Rate limits as the original had them, through the webapp over real HTTP: a user may
start 2 chats at once then 1 a minute, and send 3 messages at once then 10 a minute; the
refusal is a 429 saying when to try again. A message refused for another reason (a reply
still generating) does not use up the allowance."""

from pathlib import Path

import pytest

from coordinator.chat.rate_limits import RateLimits, Rule
from coordinator.db.database import migrate, open_database
from coordinator.errors import RateLimited
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import broker_of
from tests.support.farm import new_thread, running_farm, send_and_stream


def test_a_bucket_refills_at_its_rate(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'farm.sqlite3'}")
    migrate(db)
    now = [1000.0]
    rules = {"send": Rule(10, 3, "send another message")}
    limits = RateLimits(db, rules, clock=lambda: now[0])
    for _ in range(3):
        limits.take("send", "u")
    with pytest.raises(RateLimited, match="in 6 s") as refused:
        limits.take("send", "u")
    assert refused.value.retry_after_s == 6
    limits.take("send", "someone else")  # per user
    now[0] += 6.0
    limits.take("send", "u")
    with pytest.raises(RateLimited):
        limits.take("send", "u")


async def test_the_limits_over_http(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=5, tokens_per_s=0, reply_tokens=3)
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker, sim=sim) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        await new_thread(browser)
        third = await browser.post("/api/threads", json={"system_prompt": ""})
        assert third.status_code == 429
        assert "start another chat in" in third.json()["error"]
        assert int(third.headers["Retry-After"]) >= 1

        for i in range(3):
            streamed = await send_and_stream(farm, browser, thread_id, f"message {i}")
            assert streamed.final["state"] == "done"
        fourth = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": "more"})
        assert fourth.status_code == 429
        assert "send another message in" in fourth.json()["error"]

        # Someone else is not affected.
        other = farm.browser()
        theirs = await new_thread(other)
        for i in range(3):
            sent = await other.post(f"/api/threads/{theirs}/messages", json={"text": f"m{i}"})
            assert sent.status_code == 201, sent.text
