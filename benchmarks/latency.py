"""Added latency: what a client of the farm waits for, against the same simulator called
directly through the ollama client, side by side in one run.

For each broker (Mosquitto from the project's config, and the embedded amqtt) a farm runs
as deployed, one process per service (benchmarks/farm_processes.py: simulator,
coordinator, webapp, one worker); requests go one at a time. Measured per request:

* time to first token (TTFT) from sending the request: directly, through the browser's
  websocket (POST the message, first chunk on the socket), and through the OpenAI API
  (streaming SSE);
* per-chunk delay: when a piece of text reaches the client, against when the simulator's
  token that ends it reached a direct client, both counted from the first token (so it
  excludes TTFT). It includes the worker's coalescing (a chunk waits at most 50 ms).
"""

import asyncio
import bisect
import gc
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx
import ollama
import websockets

from benchmarks.farm_processes import ProcessFarm, process_farm
from llama_farm.ollama_sim.replies import tokenize

SIM = {"FARM_SIM_TTFT_MS": "20", "FARM_SIM_TOKENS_PER_S": "100", "FARM_SIM_REPLY_TOKENS": "40"}
REQUESTS = 40
PROMPT = "Tell me about llamas"


@dataclass
class Run:
    ttft: float
    pieces: list[tuple[float, str]]  # (seconds since the request, text)


@dataclass
class Figures:
    ttft: list[float] = field(default_factory=list)
    chunk_delay: list[float] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def direct(farm: ProcessFarm) -> Run:
    client = ollama.AsyncClient(host=farm.sim_url)
    start = time.perf_counter()
    pieces = []
    stream = await client.chat(
        model="llama3", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    async for part in stream:
        if part.message.content:
            pieces.append((time.perf_counter() - start, part.message.content))
    return Run(pieces[0][0], pieces)


async def via_websocket(farm: ProcessFarm, browser: httpx.AsyncClient, thread_id: str) -> Run:
    cookie = {"Cookie": f"farm_session={browser.cookies.get('farm_session')}"}
    url = farm.web_url.replace("http://", "ws://") + f"/ws/threads/{thread_id}"
    async with websockets.connect(url, additional_headers=cookie) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        start = time.perf_counter()
        sent = await browser.post(f"/api/threads/{thread_id}/messages", json={"text": PROMPT})
        sent.raise_for_status()
        job_id = sent.json()["reply"]["job_id"]
        message_id = sent.json()["reply"]["message_id"]
        chunks: dict[int, tuple[float, str]] = {}
        while True:
            event = json.loads(await ws.recv())
            now = time.perf_counter() - start
            if event["type"] == "chunk" and event["job_id"] == job_id:
                chunks.setdefault(event["seq"], (now, event["text"]))
            elif (
                event["type"] == "message"
                and event["message"]["message_id"] == message_id
                and event["message"]["state"] not in ("queued", "generating")
            ):
                break
    pieces = [chunks[s] for s in sorted(chunks)]
    return Run(pieces[0][0], pieces)


async def via_openai(farm: ProcessFarm, key: str) -> Run:
    body = {"model": "llama3", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {key}"}
    pieces = []
    async with httpx.AsyncClient(base_url=farm.web_url, timeout=30) as client:
        start = time.perf_counter()
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    pieces.append((time.perf_counter() - start, delta))
    return Run(pieces[0][0], pieces)


def token_schedule(runs: list[Run]) -> list[float]:
    """Median arrival of each token at a direct client, from the first token."""
    per_token = zip(*[[t - run.ttft for t, _ in run.pieces] for run in runs], strict=False)
    return [statistics.median(times) for times in per_token]


def chunk_delays(run: Run, schedule: list[float]) -> list[float]:
    """For each piece after the first: its arrival, from the first piece, minus the direct
    arrival (from the first token) of the last token it completes."""
    text = "".join(piece for _, piece in run.pieces)
    ends = list(itertools.accumulate(len(token) for token in tokenize(text)))
    delays = []
    seen = len(run.pieces[0][1])
    for t, piece in run.pieces[1:]:
        seen += len(piece)
        last = bisect.bisect_right(ends, seen) - 1
        if 0 <= last < len(schedule):
            delays.append((t - run.ttft) - schedule[last])
    return delays


async def measure(kind: str) -> dict[str, Figures]:
    figures = {"direct": Figures(), "websocket": Figures(), "openai": Figures()}
    async with (
        process_farm(kind, sim=SIM, coordinator={"FARM_RATE_SEND_PER_MINUTE": "100000"}) as farm,
        httpx.AsyncClient(base_url=farm.web_url, timeout=30) as browser,
    ):
        created = await browser.post("/api/threads", json={"system_prompt": ""})
        thread_id = created.json()["thread_id"]
        for _ in range(3):  # warm up: model loaded, connections open
            await direct(farm)
            await via_websocket(farm, browser, thread_id)
            await via_openai(farm, farm.api_key)
        runs: dict[str, list[Run]] = {name: [] for name in figures}
        # This process's own garbage collections landed inside the timings (a gc callback
        # saw 37 of about 10 ms and one of 52 ms in a run; they made the OpenAI client's
        # p99 90-120 ms): collect between requests instead, outside the clock.
        gc.disable()
        try:
            for _ in range(REQUESTS):  # interleaved, so drift hits all three alike
                gc.collect()
                runs["direct"].append(await direct(farm))
                gc.collect()
                runs["websocket"].append(await via_websocket(farm, browser, thread_id))
                gc.collect()
                runs["openai"].append(await via_openai(farm, farm.api_key))
        finally:
            gc.enable()
    schedule = token_schedule(runs["direct"])
    for name, measured in runs.items():
        figures[name].ttft = [run.ttft for run in measured]
        for run in measured:
            figures[name].chunk_delay.extend(chunk_delays(run, schedule))
    return figures


def table(results: dict[str, dict[str, Figures]]) -> str:
    ms = 1000.0
    lines = [
        "| broker | client | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 "
        "| added chunk delay p50 | added chunk delay p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, figures in results.items():
        base = figures["direct"]
        for name, f in figures.items():
            # Per request, against the direct request made right before it (the three are
            # interleaved), so a slow moment of the machine counts against both.
            added = [farm - direct for farm, direct in zip(f.ttft, base.ttft, strict=True)]
            p50, p99 = (
                ("-", "-")
                if name == "direct"
                else (f"{pct(added, 50) * ms:.1f} ms", f"{pct(added, 99) * ms:.1f} ms")
            )
            lines.append(
                f"| {kind} | {name} | {pct(f.ttft, 50) * ms:.1f} ms | {pct(f.ttft, 99) * ms:.1f} ms"
                f" | {p50} | {p99}"
                f" | {pct(f.chunk_delay, 50) * ms:.1f} ms | {pct(f.chunk_delay, 99) * ms:.1f} ms |"
            )
    return "\n".join(lines)


def main() -> str:
    results = {kind: asyncio.run(measure(kind)) for kind in ("mosquitto", "amqtt")}
    out = table(results)
    print(
        f"\nAdded latency: {REQUESTS} requests per client, simulator TTFT "
        f"{SIM['FARM_SIM_TTFT_MS']} ms, {SIM['FARM_SIM_TOKENS_PER_S']} tokens/s, "
        f"{SIM['FARM_SIM_REPLY_TOKENS']} tokens"
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
