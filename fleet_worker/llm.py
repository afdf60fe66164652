"""Talking to Ollama, always through the official ``ollama`` client."""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama

from farm_protocol.chat import ToolCall
from farm_protocol.models import normalize_model
from farm_protocol.payloads import (
    MAX_EMBEDDING_TEXT_CHARS,
    ChatTurn,
    JobAssignment,
    embedding_text,
)

log = logging.getLogger(__name__)

SIMULATOR_FORMAT = "llama-farm-sim"  # what the project's simulator reports as model format
EMBEDDING_PIECE_CHARS = 16_384  # an embedding job's text goes out in pieces this long


class LlmError(Exception):
    """Generation failed. ``reason`` is fit for a user; ``retryable`` says whether another
    worker might succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class OllamaUnavailable(LlmError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"the worker's Ollama is unreachable ({detail})", retryable=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended, as Ollama reports it with its last part."""

    prompt_tokens: int | None
    completion_tokens: int | None
    done_reason: str | None
    tool_calls: list[ToolCall]


def _message(turn: ChatTurn) -> dict[str, Any]:
    """A context turn as Ollama's chat API takes it."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"function": {"name": c.name, "arguments": c.arguments}} for c in turn.tool_calls
        ]
    if turn.tool_name:
        message["tool_name"] = turn.tool_name
    return message


@dataclass(frozen=True, slots=True)
class Inventory:
    models: list[str]  # normalised names Ollama has pulled
    loaded: list[str]  # normalised names in memory right now
    simulated: bool


class OllamaBackend:
    def __init__(self, host: str, *, first_token_timeout_s: float, token_timeout_s: float) -> None:
        self.host = host
        timeout = httpx.Timeout(connect=5.0, read=token_timeout_s, write=30.0, pool=10.0)
        self.client = ollama.AsyncClient(host=host, timeout=timeout)
        self.first_token_timeout_s = first_token_timeout_s

    async def inventory(self) -> Inventory:
        try:
            tags = await self.client.list()
            running = await self.client.ps()
        except (ConnectionError, httpx.HTTPError) as exc:
            raise OllamaUnavailable(str(exc) or type(exc).__name__) from exc
        except ollama.ResponseError as exc:
            raise LlmError(f"Ollama error: {exc.error}", retryable=True) from exc
        models = sorted(normalize_model(m.model) for m in tags.models if m.model)
        loaded = sorted(normalize_model(m.model) for m in running.models if m.model)
        simulated = any(m.details and m.details.format == SIMULATOR_FORMAT for m in tags.models)
        return Inventory(models, loaded, simulated)

    async def pull(self, model: str) -> None:
        """Pull a model, logging progress as Ollama reports it."""
        log.info("pulling %s from Ollama's registry", model)
        last = ""
        try:
            async for progress in await self.client.pull(model, stream=True):
                status = progress.status or ""
                if progress.total and progress.completed is not None:
                    status = f"{status} {100 * progress.completed // progress.total}%"
                if status != last:
                    log.info("pull %s: %s", model, status)
                    last = status
        except ollama.ResponseError as exc:
            raise LlmError(f"could not pull {model}: {exc.error}", retryable=True) from exc
        except (ConnectionError, httpx.HTTPError) as exc:
            raise OllamaUnavailable(str(exc) or type(exc).__name__) from exc

    async def stream(self, job: JobAssignment) -> AsyncIterator[str | Outcome]:
        """The reply's text pieces as Ollama produces them, then how it ended. An
        embedding job's text is its vectors (``embedding_text``), in pieces."""
        calls: list[ToolCall] = []
        try:
            if job.task == "embed":
                embedded = await self.client.embed(
                    model=job.model,
                    input=job.inputs,
                    options=dict(job.options) or None,
                    dimensions=job.dimensions,
                    truncate=job.truncate,
                )
                try:
                    text = embedding_text([list(v) for v in embedded.embeddings])
                except ValueError as exc:
                    raise LlmError(f"the model's embeddings: {exc}", retryable=False) from exc
                if len(text) > MAX_EMBEDDING_TEXT_CHARS:
                    vectors = embedded.embeddings
                    raise LlmError(
                        f"{len(vectors)} embeddings of {len(vectors[0])} dimensions are too"
                        " large for one request: send fewer inputs at once",
                        retryable=False,
                    )
                for start in range(0, len(text), EMBEDDING_PIECE_CHARS):
                    yield text[start : start + EMBEDDING_PIECE_CHARS]
                yield Outcome(embedded.prompt_eval_count, 0, "stop", [])
                return
            parts = await self.client.chat(
                model=job.model,
                messages=[_message(t) for t in job.messages],
                stream=True,
                options=dict(job.options) or None,
                format=job.format,
                tools=job.tools or None,
            )
            async for part in parts:
                if part.message.content:
                    yield part.message.content
                for call in part.message.tool_calls or ():
                    arguments = dict(call.function.arguments or {})
                    calls.append(ToolCall(name=call.function.name, arguments=arguments))
                if part.done:
                    yield Outcome(
                        part.prompt_eval_count,
                        part.eval_count,
                        part.done_reason,
                        calls,
                    )
        except ollama.ResponseError as exc:
            retryable = exc.status_code != 404
            raise LlmError(f"the model failed: {exc.error}", retryable=retryable) from exc
        except (ConnectionError, httpx.ConnectError) as exc:
            raise OllamaUnavailable(str(exc) or type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise LlmError("the model stopped producing tokens (timeout)", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise LlmError(f"the connection to Ollama broke ({exc})", retryable=True) from exc

    async def close(self) -> None:
        await self.client.close()  # type: ignore[no-untyped-call]
