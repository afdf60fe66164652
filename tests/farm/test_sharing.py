"""Sharing a thread, as the original did, over real HTTP and websockets: anyone with the
link reads it, joins it (at most 25 members, 1 join a second), sees every message and the
streaming reply live, and leaves; a member's new name reaches everyone in the thread; long
threads come 20 messages at a time; new identities are rate limited per address."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import websockets

from farm_protocol.chat import MAX_THREAD_MEMBERS, PAGE_SIZE
from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import broker_of
from tests.support.farm import (
    Farm,
    events,
    new_thread,
    running_farm,
    send_and_stream,
    wait_until,
    ws_url,
)


async def _event(socket: Any, kind: str) -> dict[str, Any]:
    async for event in events(socket):
        if event["type"] == kind:
            return event
    raise AssertionError("the events ended")


def _socket(farm: Farm, browser: httpx.AsyncClient, thread_id: str) -> Any:
    cookie = browser.cookies.get("farm_session")
    return websockets.connect(
        ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
    )


async def test_join_watch_rename_and_leave_a_shared_thread(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=5, tokens_per_s=200, reply_tokens=30)
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker, sim=sim) as farm:
        alice, bob = farm.browser(), farm.browser()
        thread_id = await new_thread(alice)
        assert (await send_and_stream(farm, alice, thread_id, "hello")).final["state"] == "done"
        alice_me = (await alice.get("/api/me")).json()
        bob_me = (await bob.get("/api/me")).json()

        # Bob has the link: he reads the thread but is not (yet) a member.
        seen = (await bob.get(f"/api/threads/{thread_id}")).json()
        assert seen["member"] is False
        assert [m["name"] for m in seen["members"]] == [alice_me["name"]]
        assert seen["messages"][0]["content"] == "hello"
        assert (await alice.get(f"/api/threads/{thread_id}")).json()["member"] is True

        async with _socket(farm, alice, thread_id) as alice_socket:
            assert (await _event(alice_socket, "snapshot"))["member"] is True
            joined = await bob.post(f"/api/threads/{thread_id}/join")
            assert joined.status_code == 200, joined.text
            # Alice sees Bob arrive, live.
            event = await _event(alice_socket, "members")
            assert [m["user_id"] for m in event["members"]] == [
                alice_me["user_id"],
                bob_me["user_id"],
            ]
            # Joining again is harmless; the thread is in Bob's list now.
            assert (await bob.post(f"/api/threads/{thread_id}/join")).status_code == 200
            assert thread_id in [t["thread_id"] for t in (await bob.get("/api/threads")).json()]

            # Bob's message and its streaming reply reach Alice's browser chunk by chunk.
            bob_stream = asyncio.create_task(send_and_stream(farm, bob, thread_id, "hi all"))
            chunks: list[str] = []
            reply_id = None
            async for event in events(alice_socket):
                if event["type"] == "message" and event["message"]["role"] == "assistant":
                    reply_id = event["message"]["message_id"]
                    if event["message"]["state"] == "done":
                        final = event["message"]
                        break
                elif event["type"] == "chunk":
                    chunks.append(event["text"])
            bobs = await bob_stream
            assert final["message_id"] == reply_id == bobs.reply_id
            assert "".join(chunks) == final["content"] == bobs.final["content"]
            assert len(chunks) >= 2

            # Bob picks a new name: Alice sees it in the member list; once a second.
            renamed = await bob.post("/api/me/name")
            assert renamed.status_code == 200
            new_name = renamed.json()["name"]
            assert new_name != bob_me["name"]
            event = await _event(alice_socket, "members")
            assert [m["name"] for m in event["members"]] == [alice_me["name"], new_name]
            again = await bob.post("/api/me/name")
            assert again.status_code == 429
            assert again.json()["error"] == "you can pick another name in 1 s"
            assert again.headers["Retry-After"] == "1"

            # Bob leaves: Alice sees it; the thread leaves Bob's list, Bob can still read it.
            assert (await bob.post(f"/api/threads/{thread_id}/leave")).status_code == 200
            event = await _event(alice_socket, "members")
            assert [m["user_id"] for m in event["members"]] == [alice_me["user_id"]]
            assert thread_id not in [t["thread_id"] for t in (await bob.get("/api/threads")).json()]
            assert (await bob.get(f"/api/threads/{thread_id}")).json()["member"] is False

        # Joining is limited to one a second, and a refused join says when to try again.
        await asyncio.sleep(1.05)
        other = await new_thread(alice)
        assert (await bob.post(f"/api/threads/{thread_id}/join")).status_code == 200
        refused = await bob.post(f"/api/threads/{other}/join")
        assert refused.status_code == 429
        assert refused.json()["error"] == "you can join another chat in 1 s"
        # A join refused for another reason does not use the allowance.
        await asyncio.sleep(1.05)
        missing = await bob.post("/api/threads/" + "0" * 32 + "/join")
        assert missing.status_code == 404
        assert (await bob.post(f"/api/threads/{other}/join")).status_code == 200


async def test_at_most_25_members_and_new_identities_are_limited(tmp_path: Path) -> None:
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker) as farm:
        owner = farm.browser()
        thread_id = await new_thread(owner)
        for _ in range(MAX_THREAD_MEMBERS - 1):
            guest = farm.browser()
            assert (await guest.post(f"/api/threads/{thread_id}/join")).status_code == 200
        members = (await owner.get(f"/api/threads/{thread_id}")).json()["members"]
        assert len(members) == MAX_THREAD_MEMBERS

        late = farm.browser()
        refused = await late.post(f"/api/threads/{thread_id}/join")
        assert refused.status_code == 409
        assert refused.json()["error"] == "this thread already has 25 members"
        # Sending would join it too: refused the same way, and nothing was stored.
        sent = await late.post(f"/api/threads/{thread_id}/messages", json={"text": "me too"})
        assert sent.status_code == 409
        snapshot = (await owner.get(f"/api/threads/{thread_id}")).json()
        assert snapshot["messages"] == []
        assert len(snapshot["members"]) == MAX_THREAD_MEMBERS
        # Anyone may still read it.
        assert (await late.get(f"/api/threads/{thread_id}")).status_code == 200

        # 26 identities so far from this address; 50 may appear at once, then 1 a minute.
        created = 0
        while True:
            response = await farm.browser().get("/api/me")
            if response.status_code == 429:
                break
            assert response.status_code == 200
            created += 1
        assert created == 50 - (MAX_THREAD_MEMBERS + 1)
        assert "you can start another identity in" in response.json()["error"]
        # Someone who already has an identity is not affected.
        assert (await owner.get("/api/me")).status_code == 200


async def test_long_threads_come_a_page_at_a_time(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=1, tokens_per_s=0, reply_tokens=2)
    settings = {"rate_send_per_minute": 10_000.0}
    async with (
        broker_of("mosquitto") as broker,
        running_farm(tmp_path, broker, sim=sim, coordinator_settings=settings) as farm,
    ):
        browser = farm.browser()
        thread_id = await new_thread(browser, system_prompt="be brief")
        for i in range(22):
            streamed = await send_and_stream(farm, browser, thread_id, f"question {i}")
            assert streamed.final["state"] == "done"
        everything = 1 + 2 * 22  # the system prompt, then questions and replies

        snapshot = (await browser.get(f"/api/threads/{thread_id}")).json()
        assert len(snapshot["messages"]) == PAGE_SIZE
        assert snapshot["has_more"] is True
        assert snapshot["messages"][-1]["role"] == "assistant"
        pages = [snapshot["messages"]]
        while True:
            before = pages[0][0]["message_id"]
            page = await browser.get(f"/api/threads/{thread_id}/messages?before={before}")
            assert page.status_code == 200, page.text
            body = page.json()
            pages.insert(0, body["messages"])
            if not body["has_more"]:
                break
        flat = [m for page in pages for m in page]
        assert len(flat) == everything
        assert len({m["message_id"] for m in flat}) == everything
        assert flat[0]["role"] == "system"
        assert [m["content"] for m in flat if m["role"] == "user"] == [
            f"question {i}" for i in range(22)
        ]
        assert [m["created_at"] for m in flat] == sorted(m["created_at"] for m in flat)

        bad = await browser.get(f"/api/threads/{thread_id}/messages")
        assert bad.status_code == 400
        unknown = await browser.get(f"/api/threads/{thread_id}/messages?before=" + "0" * 32)
        assert unknown.status_code == 404


async def test_the_owner_renames_and_deletes_a_chat_for_everyone(tmp_path: Path) -> None:
    """Only the one who started a chat renames or deletes it; every watcher hears of it;
    deleting stops its reply still generating (the worker frees at once) and leaves
    nothing behind; anyone else can only leave it (remove it from their list)."""
    sim = SimSettings(ttft_ms=5, tokens_per_s=20, reply_tokens=400)
    async with broker_of("mosquitto") as broker, running_farm(tmp_path, broker, sim=sim) as farm:
        alice, bob = farm.browser(), farm.browser()
        thread_id = await new_thread(alice)
        sent = await alice.post(f"/api/threads/{thread_id}/messages", json={"text": "go on"})
        assert sent.status_code == 201, sent.text
        assert (await bob.post(f"/api/threads/{thread_id}/join")).status_code == 200
        assert (await alice.get(f"/api/threads/{thread_id}")).json()["owner"] is True
        assert (await bob.get(f"/api/threads/{thread_id}")).json()["owner"] is False

        async with _socket(farm, bob, thread_id) as bob_socket:
            await _event(bob_socket, "snapshot")
            refused = await bob.post(f"/api/threads/{thread_id}/rename", json={"title": "mine"})
            assert refused.status_code == 403
            assert "owner" in refused.json()["error"]
            assert (await bob.delete(f"/api/threads/{thread_id}")).status_code == 403
            assert (
                await alice.post(f"/api/threads/{thread_id}/rename", json={"title": ""})
            ).status_code == 400

            renamed = await alice.post(
                f"/api/threads/{thread_id}/rename", json={"title": "Llama facts"}
            )
            assert renamed.status_code == 200, renamed.text
            assert (await _event(bob_socket, "thread"))["thread"]["title"] == "Llama facts"
            listed = (await bob.get("/api/threads")).json()
            assert [(t["title"], t["members"], t["description"]) for t in listed] == [
                ("Llama facts", 2, "go on")
            ]

            deleted = await alice.delete(f"/api/threads/{thread_id}")
            assert deleted.status_code == 200, deleted.text
            assert (await _event(bob_socket, "thread"))["thread"] is None
        assert (await bob.get(f"/api/threads/{thread_id}")).status_code == 404
        assert (await alice.get("/api/threads")).json() == []
        assert (await bob.get("/api/threads")).json() == []
        async with httpx.AsyncClient() as http:

            async def stopped() -> bool:  # the reply it was generating was stopped
                streams = (await http.get(farm.sim_url + "/sim/streams")).json()
                return bool(streams["aborted"] == 1 and streams["active"] == 0)

            await wait_until(stopped, what="the deleted chat's reply to stop")
