"""The simulator speaks Ollama's API: checked through the real ``ollama`` client."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import ollama
import pytest

from farm_runtime.http_serving import serve_app
from llama_farm.ollama_sim.app import create_sim_app
from llama_farm.ollama_sim.settings import SimSettings
from llama_farm.ports import free_port
from tests.support.farm import wait_until


@pytest.fixture
async def sim() -> AsyncIterator[ollama.AsyncClient]:
    settings = SimSettings(port=free_port(), ttft_ms=5, tokens_per_s=0, reply_tokens=12)
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_app(create_sim_app(settings), "127.0.0.1", settings.port, stop)
    )
    host = f"http://127.0.0.1:{settings.port}"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"{host}/api/version")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(up, what="the simulator")
    client = ollama.AsyncClient(host=host, timeout=5)
    yield client
    await client.close()  # type: ignore[no-untyped-call]
    stop.set()
    await task


async def test_streaming_chat_has_ollama_fields(sim: ollama.AsyncClient) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    parts = [p async for p in await sim.chat(model="llama3", messages=msgs, stream=True)]
    assert len(parts) == 13
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 12
    assert parts[-1].total_duration
    text = "".join(p.message.content or "" for p in parts)
    whole = await sim.chat(model="llama3", messages=msgs, stream=False)
    assert whole.message.content == text, "replies are a pure function of the request"
    other = await sim.chat(model="llama3", messages=[{"role": "user", "content": "bye"}])
    assert other.message.content != text


async def test_generate_echo_and_limits(sim: ollama.AsyncClient) -> None:
    gen = await sim.generate(model="mistral", prompt="say [[sim:tokens=3]]")
    assert gen.done
    assert len((gen.response or "").split()) == 3
    echo = await sim.chat(
        model="llama3", messages=[{"role": "user", "content": "a  b\nc [[sim:echo]]"}]
    )
    assert echo.message.content == "a  b\nc"
    short = await sim.chat(
        model="llama3", messages=[{"role": "user", "content": "x"}], options={"num_predict": 2}
    )
    assert short.eval_count == 2


async def test_inventory_endpoints(sim: ollama.AsyncClient) -> None:
    names = {m.model for m in (await sim.list()).models}
    assert "llama3:latest" in names
    assert "codellama:7b" in names
    assert (await sim.show("llama3")).details is not None
    assert not (await sim.ps()).models
    await sim.chat(model="llama3", messages=[{"role": "user", "content": "x"}])
    assert [m.model for m in (await sim.ps()).models] == ["llama3:latest"]
    progress = [p.status async for p in await sim.pull("phi3", stream=True)]
    assert progress[0] == "pulling manifest"
    assert progress[-1] == "success"
    assert "phi3:latest" in {m.model for m in (await sim.list()).models}


async def test_faults(sim: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await sim.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert "try pulling it first" in missing.value.error
    with pytest.raises(ollama.ResponseError) as http:
        await sim.chat(
            model="llama3", messages=[{"role": "user", "content": "[[sim:fault=http_error]]"}]
        )
    assert http.value.status_code == 500
    got: list[str] = []

    async def read_until_error() -> None:
        broken = [{"role": "user", "content": "[[sim:fault=error_mid_stream]]"}]
        async for part in await sim.chat(model="llama3", stream=True, messages=broken):
            got.append(part.message.content or "")

    with pytest.raises(ollama.ResponseError, match="mid-stream"):
        await read_until_error()
    assert got, "some tokens arrive before the mid-stream error"
    hang = ollama.AsyncClient(host=str(sim._client.base_url), timeout=0.3)
    hung = [{"role": "user", "content": "[[sim:fault=hang]]"}]
    with pytest.raises(httpx.ReadTimeout):
        await hang.chat(model="llama3", messages=hung)
    await hang.close()  # type: ignore[no-untyped-call]
    with pytest.raises(ollama.ResponseError):
        await sim.pull("no-such-model")
