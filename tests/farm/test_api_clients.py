"""The farm's APIs for programs, with the official `openai` and `ollama` clients against
`llama-farm dev` run as a process (the key it prints, its simulator behind the worker's
real `ollama` client). Every OpenAI chat-completions field honoured or refused: what each
parameter became is read back from the simulator's record of the requests it received.
Ollama's API on the farm: chat and generate, streamed and whole, the model list.

Also: usage and finish_reason, tool calls (whole and streamed), a client that hangs up
(its job is cancelled and the simulator's stream closed), and an SSE stream that waits
in the queue longer than a proxy's read timeout and still completes."""

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from farm_protocol.models import normalize_model
from llama_farm.ollama_sim.replies import embedding
from tests.support.dev_farm import dev_process
from tests.support.farm import wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


class DevFarm:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        deadline = time.monotonic() + 30
        while not (found := re.search(r"API key (\S+)\)", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        self.key = found.group(1)
        sim = re.search(r"simulated by (http://\S+)", log.read_text())
        assert sim, log.read_text()[-3000:]
        self.sim_url = sim.group(1)

    def client(self, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self.key, base_url=self.url + "v1", max_retries=0, **options
        )

    async def sim_requests(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as http:
            return list((await http.get(self.sim_url + "/sim/requests")).json()["requests"])

    async def last_request(self) -> dict[str, Any]:
        return (await self.sim_requests())[-1]

    async def sim_streams(self) -> dict[str, int]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(self.sim_url + "/sim/streams")).json())


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevFarm]:
    tmp_path = tmp_path_factory.mktemp("openai-dev")
    env = {
        "FARM_SIM_TOKENS_PER_S": "100",
        "FARM_SIM_REPLY_TOKENS": "40",
        "FARM_SIM_TTFT_MS": "20",
        "FARM_SSE_KEEPALIVE_S": "0.5",
    }
    with dev_process(tmp_path, env) as url:
        yield DevFarm(url, tmp_path / "dev.log")


async def test_sampling_and_the_token_limit_reach_ollama_and_usage_comes_back(
    farm: DevFarm,
) -> None:
    async with farm.client() as client:
        answer = await client.chat.completions.create(
            model="llama3",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "tell me about llamas"},
            ],
            temperature=0.3,
            top_p=0.9,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            max_tokens=5,
            user="someone",  # changes nothing: accepted
        )
        asked = await farm.last_request()
        assert asked["options"] == {
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "num_predict": 5,
        }
        assert asked["messages"][0] == {"role": "system", "content": "Be brief."}
        choice = answer.choices[0]
        assert choice.finish_reason == "length"
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 5
        assert answer.usage.prompt_tokens == 6  # "Be brief." and "tell me about llamas"
        assert answer.usage.total_tokens == 11
        assert len(choice.message.content or "") > 0

        await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=3,
        )
        assert (await farm.last_request())["options"] == {"num_predict": 3}


async def test_stop_sequences_end_the_reply_where_they_start(farm: DevFarm) -> None:
    async with farm.client() as client:
        answer = await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "[[sim:echo]] one two END three"}],
            stop="END",
        )
        assert (await farm.last_request())["options"] == {"stop": ["END"]}
        assert answer.choices[0].message.content == "one two "  # as Ollama: up to "END"
        assert answer.choices[0].finish_reason == "stop"
        stream = await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "[[sim:echo]] alpha beta gamma delta"}],
            stop=["gamma", "beta"],
            stream=True,
            stream_options={"include_usage": True},
        )
        events = [event async for event in stream]
        text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
        assert text == "alpha "
        assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "stop"
        assert events[-1].choices == []
        assert events[-1].usage is not None
        assert events[-1].usage.completion_tokens == 2  # "alpha", " "
        assert all(e.usage is None for e in events[:-1])


async def test_json_replies_follow_the_format_asked_for(farm: DevFarm) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
        "required": ["name", "legs"],
    }
    async with farm.client() as client:
        answer = await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "describe a llama"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "animal", "schema": dict(schema)},
            },
        )
        assert (await farm.last_request())["format"] == schema
        parsed = json.loads(answer.choices[0].message.content or "")
        assert isinstance(parsed["name"], str)
        assert isinstance(parsed["legs"], int)

        answer = await client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "any json"}],
            response_format={"type": "json_object"},
        )
        assert (await farm.last_request())["format"] == "json"
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


async def test_tools_are_called_and_their_results_answered(farm: DevFarm) -> None:
    question: list[Any] = [{"role": "user", "content": "weather in Lima?"}]
    async with farm.client() as client:
        answer = await client.chat.completions.create(
            model="llama3", messages=question, tools=[WEATHER]
        )
        assert (await farm.last_request())["tools"] == [WEATHER]
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function"
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        assert isinstance(arguments["city"], str)
        assert isinstance(arguments["days"], int)

        # The same call, streamed: in OpenAI's delta shape.
        stream = await client.chat.completions.create(
            model="llama3", messages=question, tools=[WEATHER], stream=True
        )
        events = [e async for e in stream]
        deltas = [d for e in events for d in e.choices[0].delta.tool_calls or ()]
        assert [(d.index, d.id, d.function and d.function.name) for d in deltas] == [
            (0, deltas[0].id, "get_weather")
        ]
        assert json.loads((deltas[0].function and deltas[0].function.arguments) or "") == arguments
        assert events[-1].choices[0].finish_reason == "tool_calls"

        # The tool's result goes back; the model answers from it.
        followed = await client.chat.completions.create(
            model="llama3",
            messages=[
                *question,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": "21C and sunny"},
            ],
            tools=[WEATHER],
        )
        sent = (await farm.last_request())["messages"]
        assert sent[1]["tool_calls"] == [
            {"function": {"name": "get_weather", "arguments": arguments}}
        ]
        assert sent[2] == {"role": "tool", "content": "21C and sunny", "tool_name": "get_weather"}
        assert followed.choices[0].message.content == "get_weather returned: 21C and sunny"
        assert followed.choices[0].finish_reason == "stop"

        await client.chat.completions.create(
            model="llama3", messages=question, tools=[WEATHER], tool_choice="none"
        )
        assert "tools" not in await farm.last_request()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"temperature": 3}, "temperature"),
        ({"tool_choice": "required", "tools": [WEATHER]}, "tool_choice"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
    ],
)
async def test_what_the_farm_cannot_honour_is_refused_by_name(
    farm: DevFarm, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]} | extra
    async with httpx.AsyncClient() as http:
        refused = await http.post(
            farm.url + "v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {farm.key}"},
        )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_one_model_is_described_and_an_unknown_one_is_not(farm: DevFarm) -> None:
    async with farm.client() as client:
        found = await client.models.retrieve("llama3")
        assert (found.id, found.owned_by) == ("llama3", "llama-farm")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-99")


async def test_a_client_that_hangs_up_frees_the_worker(farm: DevFarm) -> None:
    """Streaming or not, a client that goes away mid-reply cancels its job: the worker
    closes its stream to Ollama (the simulator sees it aborted), and its slot goes to the
    next request at once (both of the dev worker's slots were taken by replies of 100 s)."""
    long: list[Any] = [{"role": "user", "content": "[[sim:tokens=2000]] [[sim:tps=20]] go on"}]
    before = await farm.sim_streams()
    async with farm.client() as client:
        streams = [
            await client.chat.completions.create(model="llama3", messages=long, stream=True)
            for _ in range(2)
        ]
        for stream in streams:
            async for event in stream:
                if event.choices and event.choices[0].delta.content:
                    break  # it is generating
        mine: list[Any] = [{"role": "user", "content": "[[sim:echo]] my turn"}]
        waiting = asyncio.create_task(client.chat.completions.create(model="llama3", messages=mine))
        await streams[0].close()
        answer = await asyncio.wait_for(waiting, 30)
        assert answer.choices[0].message.content == "my turn"
        await streams[1].close()
    await _until_aborted(farm, before["aborted"] + 2)

    async with httpx.AsyncClient() as http:
        whole = http.post(
            farm.url + "v1/chat/completions",
            json={"model": "llama3", "messages": long},
            headers={"Authorization": f"Bearer {farm.key}"},
        )
        counts = await farm.sim_streams()
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.wait_for(_started_then(whole, farm, counts), 30)
    await _until_aborted(farm, before["aborted"] + 3)
    assert (await farm.sim_streams())["active"] == 0


async def _started_then(request: Any, farm: DevFarm, streams: dict[str, int]) -> None:
    """Send ``request`` with a read timeout that ends it once its reply is generating."""
    task = asyncio.ensure_future(request)

    async def generating() -> bool:
        return (await farm.sim_streams())["active"] > streams["active"]

    await wait_until(generating, what="the reply to start")
    task.cancel()  # the client gives up: its connection closes
    try:
        await task
    except asyncio.CancelledError:
        raise httpx.ReadTimeout("gave up") from None


async def _until_aborted(farm: DevFarm, count: int) -> None:
    async def aborted() -> bool:
        return (await farm.sim_streams())["aborted"] >= count

    await wait_until(aborted, what="the simulator's stream to be closed")


async def test_a_queued_stream_outlasts_a_proxys_read_timeout(farm: DevFarm) -> None:
    """Both of the dev worker's slots busy: a third stream waits in the queue several
    times longer than the client's read timeout (a proxy's proxy_read_timeout) allows
    between two bytes; the webapp's keep-alive comments carry it through."""
    busy: list[Any] = [{"role": "user", "content": "[[sim:tokens=60]] [[sim:tps=20]] keep busy"}]
    async with farm.client() as client, farm.client(timeout=httpx.Timeout(5, read=1.5)) as strict:
        hogs = [
            asyncio.create_task(client.chat.completions.create(model="llama3", messages=busy))
            for _ in range(2)
        ]

        async def both_busy() -> bool:
            return (await farm.sim_streams())["active"] >= 2

        await wait_until(both_busy, what="both slots busy")
        stream = await strict.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "[[sim:echo]] finally my turn"}],
            stream=True,
        )
        text = "".join([e.choices[0].delta.content or "" async for e in stream if e.choices])
        assert text == "finally my turn"
        await asyncio.gather(*hogs)


@contextlib.asynccontextmanager
async def _ollama(farm: DevFarm, key: str | None = None) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(
        host=farm.url.rstrip("/"), headers={"Authorization": f"Bearer {key or farm.key}"}
    )
    try:
        yield client
    finally:
        await client.close()  # type: ignore[no-untyped-call]


async def test_an_ollama_client_uses_the_farm_as_one_ollama(farm: DevFarm) -> None:
    async with _ollama(farm) as client:
        listed = await client.list()
        assert "llama3" in [m.model for m in listed.models]
        shown = await client.show("llama3")
        assert shown.capabilities is not None
        assert "completion" in shown.capabilities
        with pytest.raises(ollama.ResponseError) as missing:
            await client.show("gpt-99")
        assert missing.value.status_code == 404
        running = await client.ps()
        assert isinstance(running.models, list)

        # chat, streamed: parts, then the last one with the counts
        parts = [
            part
            async for part in await client.chat(
                model="llama3",
                messages=[{"role": "user", "content": "[[sim:echo]] hello from ollama"}],
                stream=True,
                options={"temperature": 0.2, "num_predict": 50},
            )
        ]
        assert "".join(p.message.content or "" for p in parts) == "hello from ollama"
        assert parts[-1].done is True
        assert parts[-1].done_reason == "stop"
        assert parts[-1].eval_count == 3
        assert parts[-1].prompt_eval_count == 4  # the simulator counts words, directives too
        assert all(not p.done for p in parts[:-1])
        assert (await farm.last_request())["options"] == {"temperature": 0.2, "num_predict": 50}

        # chat, whole, with a schema; and a tool call
        whole = await client.chat(
            model="llama3",
            messages=[{"role": "user", "content": "a llama as JSON"}],
            format={"type": "object", "properties": {"name": {"type": "string"}}},
        )
        assert isinstance(json.loads(whole.message.content or "")["name"], str)
        called = await client.chat(
            model="llama3", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER]
        )
        (call,) = called.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments["city"], str)

        # generate, with a system prompt and a token limit
        generated = await client.generate(
            model="llama3", prompt="tell me a story", system="Be short.", options={"num_predict": 4}
        )
        assert generated.done_reason == "length"
        assert generated.eval_count == 4
        assert (await farm.last_request())["messages"] == [
            {"role": "system", "content": "Be short."},
            {"role": "user", "content": "tell me a story"},
        ]
        assert (
            await client.generate(model="llama3", prompt="[[sim:echo]] plain")
        ).response == "plain"


async def test_the_ollama_api_refuses_what_it_cannot_do_and_keys_it_does_not_know(
    farm: DevFarm,
) -> None:
    async with _ollama(farm) as client:
        with pytest.raises(ollama.ResponseError, match="images") as refused:
            await client.chat(
                model="llama3",
                messages=[{"role": "user", "content": "what?", "images": ["aGk="]}],
            )
        assert refused.value.status_code == 400
        with pytest.raises(ollama.ResponseError, match=r"not found|does not exist") as unknown:
            await client.chat(model="gpt-99", messages=[{"role": "user", "content": "hi"}])
        assert unknown.value.status_code == 404
    async with _ollama(farm, "lfa_wrong") as stranger:
        with pytest.raises(ollama.ResponseError) as denied:
            await stranger.list()
        assert denied.value.status_code == 401
    async with httpx.AsyncClient() as http:
        version = (await http.get(farm.url + "api/version")).json()
    assert version["version"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("v1/chat/completions", {"model": "llama3", "messages": "not a list"}),
        ("v1/embeddings", {"model": "llama3"}),
        ("api/chat", {"model": "llama3", "messages": []}),
        ("api/generate", {"model": "llama3"}),
        ("api/embed", {"input": "no model"}),
        ("api/show", {}),
    ],
)
async def test_a_wrong_key_is_told_so_before_its_malformed_request(
    farm: DevFarm, path: str, body: dict[str, Any]
) -> None:
    """OpenAI answers a bad key 401 whatever the body: so does the farm, on both APIs.
    With a good key the same body is a 400 naming what is wrong."""
    async with httpx.AsyncClient(base_url=farm.url, timeout=30) as http:
        for key, status in (("lfa_0000_wrong", 401), (None, 401), (farm.key, 400)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            answer = await http.post(path, json=body, headers=headers)
            assert answer.status_code == status, (key, answer.text)
            if status == 401:
                assert "key" in answer.text.lower()
        garbled = await http.post(
            path, content=b"{not json", headers={"Authorization": "Bearer lfa_0000_wrong"}
        )
        assert garbled.status_code == 401


def _vector(text: str, dims: int = 8) -> list[float]:
    """What the simulator answers for ``text`` (its vectors are exact in float32)."""
    return embedding(normalize_model("llama3"), text, dims)


async def test_embeddings_come_back_exact_through_both_apis(farm: DevFarm) -> None:
    texts = ["the first llama", "the second llama", "a third"]
    async with farm.client() as client:
        made = await client.embeddings.create(model="llama3", input=texts)  # base64, by default
        assert [d.embedding for d in made.data] == [_vector(t) for t in texts]
        assert [d.index for d in made.data] == [0, 1, 2]
        assert made.usage.prompt_tokens == 8
        assert (await farm.last_request())["input"] == texts

        floats = await client.embeddings.create(
            model="llama3", input="one text", encoding_format="float", dimensions=4
        )
        assert floats.data[0].embedding == _vector("one text", 4)
        assert (await farm.last_request())["dimensions"] == 4

        # More vectors than one reply can carry: refused by the worker, with the reason.
        with pytest.raises(openai.APIStatusError, match="send fewer inputs") as too_many:
            await client.embeddings.create(
                model="llama3", input=[f"text {i}" for i in range(20)], dimensions=40_000
            )
        assert too_many.value.status_code == 502

    async with _ollama(farm) as ollama_client:
        embedded = await ollama_client.embed(model="llama3", input=texts)
        assert [list(v) for v in embedded.embeddings] == [_vector(t) for t in texts]
        assert embedded.prompt_eval_count == 8
        legacy = await ollama_client.embeddings(model="llama3", prompt="old style")
        assert list(legacy.embedding) == _vector("old style")

    async with httpx.AsyncClient() as http:
        refused = await http.post(
            farm.url + "v1/embeddings",
            json={"model": "llama3", "input": [[1, 2, 3]]},
            headers={"Authorization": f"Bearer {farm.key}"},
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input"
