"""Conversation controls through the webapp, on a real farm: a message sent while the
sender's reply generates waits its turn and is answered with that reply in its context;
a message edited branches the conversation, the context follows the branch shown, and
any member can switch back. What the model was sent is read back from the simulator."""

import json
from pathlib import Path
from typing import Any

import httpx
import websockets

from llama_farm.ollama_sim.settings import SimSettings
from tests.support.brokers import broker_of
from tests.support.farm import (
    Farm,
    events,
    new_thread,
    running_farm,
    send_and_stream,
    until_final,
    ws_url,
)


async def _sent_to_model(farm: Farm) -> list[dict[str, Any]]:
    """The messages of the simulator's latest generation request."""
    async with httpx.AsyncClient(base_url=farm.sim_url) as sim:
        asked = (await sim.get("/sim/requests")).json()["requests"]
    messages: list[dict[str, Any]] = asked[-1]["messages"]
    return messages


def _turns(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


async def _watch(farm: Farm, browser: httpx.AsyncClient, thread_id: str) -> Any:
    cookie = browser.cookies.get("farm_session")
    return websockets.connect(
        ws_url(farm, thread_id), additional_headers={"Cookie": f"farm_session={cookie}"}
    )


async def test_a_message_sent_while_a_reply_generates_waits_its_turn(tmp_path: Path) -> None:
    sim = SimSettings(ttft_ms=0, tokens_per_s=40)
    async with (
        broker_of("mosquitto") as broker,
        running_farm(tmp_path, broker, sim=sim, coordinator_settings={"chat_backlog": 1}) as farm,
    ):
        browser = farm.browser()
        thread_id = await new_thread(browser)
        url = f"/api/threads/{thread_id}/messages"
        async with await _watch(farm, browser, thread_id) as socket:
            assert json.loads(await socket.recv())["type"] == "snapshot"
            first = await browser.post(url, json={"text": "[[sim:tokens=80]] first"})
            assert first.status_code == 201, first.text
            # The worker has a free slot, but this user's replies run one at a time.
            second = await browser.post(url, json={"text": "second"})
            assert second.status_code == 201, second.text
            assert second.json()["reply"]["state"] == "queued"
            # One generating and one waiting is this farm's most (FARM_CHAT_BACKLOG=1).
            third = await browser.post(url, json={"text": "third"})
            assert third.status_code == 429
            assert "replies generating or waiting" in third.json()["error"]

            order: list[str] = []
            first_id = first.json()["reply"]["message_id"]
            second_id = second.json()["reply"]["message_id"]
            final: dict[str, dict[str, Any]] = {}
            async for event in events(socket, 20):
                if event["type"] != "message" or event["message"]["role"] != "assistant":
                    continue
                message = event["message"]
                if message["state"] == "generating" and message["message_id"] not in order:
                    order.append(message["message_id"])
                if message["state"] == "done":
                    final[message["message_id"]] = message
                    order.append(f"{message['message_id']} done")
                    if len(final) == 2:
                        break
        # the second began only after the first ended, and was asked with it
        assert order.index(f"{first_id} done") < order.index(f"{second_id} done")
        if second_id in order:
            assert order.index(f"{first_id} done") < order.index(second_id)
        assert _turns(await _sent_to_model(farm)) == [
            ("user", "[[sim:tokens=80]] first"),
            ("assistant", final[first_id]["content"]),
            ("user", "second"),
        ]


async def test_an_edited_message_branches_the_conversation(tmp_path: Path) -> None:
    quick = {"rate_send_per_minute": 600.0}  # more messages than the burst
    async with (
        broker_of("mosquitto") as broker,
        running_farm(tmp_path, broker, coordinator_settings=quick) as farm,
    ):
        owner, guest, stranger = farm.browser(), farm.browser(), farm.browser()
        thread_id = await new_thread(owner, "Be brief.")
        alpha = await send_and_stream(farm, owner, thread_id, "[[sim:tokens=3]] alpha")
        beta = await send_and_stream(farm, owner, thread_id, "[[sim:tokens=3]] beta")
        before = (await owner.get(f"/api/threads/{thread_id}")).json()
        texts = [m["content"] for m in before["messages"]]
        assert texts[:2] == ["Be brief.", "[[sim:tokens=3]] alpha"]
        alpha_id = before["messages"][1]["message_id"]
        assert before["thread"]["leaf_id"] == beta.reply_id

        edit_url = f"/api/threads/{thread_id}/messages/{alpha_id}/edit"
        assert (await guest.post(f"/api/threads/{thread_id}/join")).status_code == 200
        async with await _watch(farm, guest, thread_id) as socket:
            assert json.loads(await socket.recv())["type"] == "snapshot"
            # Only its author edits a message; a reply is not edited.
            assert (await guest.post(edit_url, json={"text": "mine now"})).status_code == 403
            reply_edit = edit_url.replace(alpha_id, alpha.reply_id)
            assert (await owner.post(reply_edit, json={"text": "x"})).status_code == 404
            edited = await owner.post(edit_url, json={"text": "[[sim:tokens=3]] gamma"})
            assert edited.status_code == 201, edited.text
            gamma_id = edited.json()["user_message"]["message_id"]
            assert edited.json()["user_message"]["parent_id"] == before["messages"][0]["message_id"]
            assert edited.json()["user_message"]["versions"] == [alpha_id, gamma_id]
            # A watcher hears that the thread shows another branch, then of the new
            # version, with its versions as a snapshot shows them (a page that loaded
            # the snapshot before the event came must not lose its version switch).
            branched = False
            async for event in events(socket):
                if event["type"] == "thread":
                    assert event["thread"]["leaf_id"] == edited.json()["reply"]["message_id"]
                    branched = True
                elif event["type"] == "message" and event["message"]["message_id"] == gamma_id:
                    assert event["message"]["versions"] == [alpha_id, gamma_id]
                    break
            assert branched
            _, gamma_reply = await until_final(socket, edited.json()["reply"]["message_id"])
        assert gamma_reply["state"] == "done"
        # The model was asked with the new branch only: the system prompt and the edit.
        assert _turns(await _sent_to_model(farm)) == [
            ("system", "Be brief."),
            ("user", "[[sim:tokens=3]] gamma"),
        ]
        shown = (await owner.get(f"/api/threads/{thread_id}")).json()["messages"]
        assert [m["message_id"] for m in shown[1:]] == [gamma_id, gamma_reply["message_id"]]
        assert shown[1]["versions"] == [alpha_id, gamma_id]

        # Any member switches back (to the first version, down to its newest message); a
        # reader who is not a member cannot.
        branch = f"/api/threads/{thread_id}/branch"
        assert (await stranger.get(f"/api/threads/{thread_id}")).status_code == 200
        refused = await stranger.post(branch, json={"message_id": alpha_id})
        assert refused.status_code == 403
        switched = await owner.post(branch, json={"message_id": alpha_id})
        assert switched.status_code == 200, switched.text
        assert switched.json()["leaf_id"] == beta.reply_id
        shown = (await owner.get(f"/api/threads/{thread_id}")).json()["messages"]
        assert [m["message_id"] for m in shown] == [m["message_id"] for m in before["messages"]]
        assert shown[1]["versions"] == [alpha_id, gamma_id]
        unknown = await owner.post(branch, json={"message_id": "0" * 32})
        assert unknown.status_code == 404

        # The next message continues the branch shown, and so does its context.
        delta = await send_and_stream(farm, owner, thread_id, "[[sim:tokens=3]] delta")
        assert delta.final["state"] == "done"
        assert _turns(await _sent_to_model(farm)) == [
            ("system", "Be brief."),
            ("user", "[[sim:tokens=3]] alpha"),
            ("assistant", alpha.final["content"]),
            ("user", "[[sim:tokens=3]] beta"),
            ("assistant", beta.final["content"]),
            ("user", "[[sim:tokens=3]] delta"),
        ]
        # paging back walks the branch shown
        older = await owner.get(
            f"/api/threads/{thread_id}/messages", params={"before": delta.reply_id}
        )
        assert [m["content"] for m in older.json()["messages"]][-2:] == [
            beta.final["content"],
            "[[sim:tokens=3]] delta",
        ]
