"""Talking to Ollama, always through the official ``ollama`` client."""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import ollama

from farm_protocol.models import normalize_model
from farm_protocol.payloads import JobAssignment

log = logging.getLogger(__name__)

SIMULATOR_FORMAT = "llama-farm-sim"  # what the project's simulator reports as model format


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

    async def stream(self, job: JobAssignment) -> AsyncIterator[str]:
        """The reply's text pieces as Ollama produces them."""
        try:
            parts = await self.client.chat(
                model=job.model,
                messages=[t.model_dump() for t in job.messages],
                stream=True,
                options=dict(job.options) or None,
            )
            async for part in parts:
                if part.message.content:
                    yield part.message.content
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
