"""Running one job: accepted -> chunks (with sequence numbers) and checkpoints -> done or
failed."""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from farm_protocol import topics
from farm_protocol.codec import encode
from farm_protocol.payloads import (
    MAX_CHECKPOINT_CHARS,
    JobAccepted,
    JobAssignment,
    JobCheckpoint,
    JobChunk,
    JobDone,
    JobFailed,
)
from farm_runtime.outbox import Outbox
from farm_runtime.queues import get_within
from fleet_worker.coalesce import DELIMITERS, Coalescer
from fleet_worker.llm import LlmError, OllamaBackend, Outcome
from fleet_worker.settings import WorkerSettings
from fleet_worker.transcripts import Transcripts

log = logging.getLogger(__name__)

_END = object()


class JobRunner:
    def __init__(
        self,
        worker_id: str,
        backend: OllamaBackend,
        outbox: Outbox,
        settings: WorkerSettings,
        ensure_model: Callable[[str], Awaitable[None]],
    ) -> None:
        self.worker_id = worker_id
        self.ensure_model = ensure_model
        self.backend = backend
        self.outbox = outbox
        self.settings = settings
        # Set when the worker stops: a job cancelled then is reported failed (retryable) so
        # the coordinator can give it to another worker at once.
        self.stopping = False
        self.transcripts = Transcripts()

    async def run(self, job: JobAssignment, session_id: str) -> bool:
        """Run ``job`` to its end. True if it succeeded. A cancel (CancelledError) stops the
        Ollama stream at once and sends only a last checkpoint of the text so far: the
        coordinator already ended the job."""
        emitter = _Emitter(
            self.outbox,
            self.worker_id,
            job,
            self.transcripts,
            self.settings.checkpoint_s,
            session_id,
        )
        started = time.monotonic()
        await emitter.accept()
        try:
            await self.ensure_model(job.model)
            await self._generate(job, emitter)
        except LlmError as exc:
            log.warning("job %s failed: %s", job.job_id, exc.reason)
            await emitter.fail(exc.reason, retryable=exc.retryable)
            return False
        except asyncio.CancelledError:
            if self.stopping:
                await emitter.fail("the worker shut down before finishing", retryable=True)
            else:
                # stopped by the coordinator: the text generated so far, for the record
                # (the coordinator ended the job; it keeps this much of the reply)
                await emitter.checkpoint()
            raise
        log.info(
            "%6.2fs -> %s(job=%s) %d chunks",
            time.monotonic() - started,
            job.model,
            job.job_id,
            emitter.seq,
        )
        return True

    async def _generate(self, job: JobAssignment, emitter: "_Emitter") -> None:
        coalescer = Coalescer(
            self.settings.chunk_max_delay_ms / 1000,
            self.settings.chunk_max_chars,
            DELIMITERS if self.settings.chunk_on_delimiter else (),
        )
        tokens: asyncio.Queue[object] = asyncio.Queue()
        pump = asyncio.create_task(
            _pump(self.backend.stream(job), tokens), name=f"llm-{job.job_id}"
        )
        try:
            outcome: Outcome | None = None
            first = True  # no token yet (the first-token timeout applies)
            started = False  # no text sent yet
            while True:
                limit = (
                    self.settings.first_token_timeout_s if first else self.settings.token_timeout_s
                )
                waits = [w for w in (coalescer.wait_s(), emitter.checkpoint_in()) if w is not None]
                wait = min(waits) if waits else None
                try:
                    item = await get_within(tokens, wait if wait is not None else limit)
                except TimeoutError:
                    if wait is None:
                        raise LlmError(
                            "the model stopped producing tokens", retryable=True
                        ) from None
                    await emitter.chunk(coalescer.due())
                    if emitter.checkpoint_in() == 0.0:
                        await emitter.checkpoint()
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Outcome):
                    outcome = item
                    continue
                assert isinstance(item, str)
                first = False
                chunk = coalescer.add(item)
                if not started and item:
                    # The first token goes out at once: it is what the user waits for.
                    started = True
                    chunk = chunk or coalescer.take()
                await emitter.chunk(chunk)
            await emitter.chunk(coalescer.take())
            await emitter.done(outcome)
        finally:
            pump.cancel()  # closes the HTTP stream to Ollama
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump


async def _pump(stream: AsyncIterator[str | Outcome], out: asyncio.Queue[object]) -> None:
    try:
        async for piece in stream:
            await out.put(piece)
    except LlmError as exc:
        await out.put(exc)
        return
    except Exception as exc:
        log.exception("unexpected error from the model stream")
        await out.put(LlmError(f"unexpected error talking to the model: {exc}", retryable=True))
        return
    await out.put(_END)


class _Emitter:
    """Publishes one job's events in order: its live chunks on the job's topic, and its
    progress (*accepted*, checkpoints of the text, *done* or *failed*) on its progress
    topic, keeping the running sequence and checksum.

    A checkpoint goes out with the first chunk (the reply has started), then every
    ``checkpoint_s`` while there is new text, or sooner when much text waits. Each holds
    the previous checkpoint's new chunks as well as its own, and *done* and *failed* hold
    the last checkpoint's as well as the rest: any one of them can be lost, or handled
    late by another coordinator, and the next still continues the stored text."""

    def __init__(
        self,
        outbox: Outbox,
        worker_id: str,
        job: JobAssignment,
        transcripts: Transcripts,
        checkpoint_s: float,
        session_id: str,
    ) -> None:
        self.outbox = outbox
        self.job = job
        self.chunk_topic = topics.job_events(worker_id, job.thread_id, job.job_id)
        self.progress_topic = topics.job_progress(worker_id, job.thread_id, job.job_id)
        self.checkpoint_s = checkpoint_s
        self.accepted = JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=session_id)
        self.transcript = transcripts.start(self.accepted)
        self.texts = self.transcript.texts  # every chunk's text, by seq
        self.seq = 0
        self.chars = 0
        self.digest = hashlib.sha256()
        self.window = 0  # the first chunk of the last checkpoint's new part
        self.unsaved = 0  # the first chunk in no checkpoint yet
        self.unsaved_chars = 0
        self.saved_at = 0.0  # when the last checkpoint went out

    async def _progress(self, payload: JobAccepted | JobCheckpoint | JobDone | JobFailed) -> None:
        await self.outbox.put(self.progress_topic, encode(payload), qos=topics.QOS_JOB_EVENTS)

    async def accept(self) -> None:
        await self._progress(self.accepted)

    async def chunk(self, text: str | None) -> None:
        if not text:
            return
        chunk = JobChunk(job_id=self.job.job_id, attempt=self.job.attempt, seq=self.seq, text=text)
        self.texts.append(text)
        await self.outbox.put(self.chunk_topic, encode(chunk), qos=topics.QOS_JOB_EVENTS)
        self.seq += 1
        self.chars += len(text)
        self.unsaved_chars += len(text)
        self.digest.update(text.encode())
        if self.seq == 1 or self.checkpoint_in() == 0.0:
            await self.checkpoint()

    def checkpoint_in(self, now: float | None = None) -> float | None:
        """Seconds until the text not yet checkpointed is due (None: there is none)."""
        if self.unsaved == self.seq:
            return None
        if self.unsaved_chars >= MAX_CHECKPOINT_CHARS // 2:
            return 0.0
        current = time.monotonic() if now is None else now
        return max(0.0, self.saved_at + self.checkpoint_s - current)

    async def checkpoint(self) -> None:
        if self.unsaved == self.seq:
            return
        await self._progress(
            JobCheckpoint(
                job_id=self.job.job_id,
                attempt=self.job.attempt,
                from_seq=self.window,
                texts=self.texts[self.window :],
            )
        )
        self.window, self.unsaved, self.unsaved_chars = self.unsaved, self.seq, 0
        self.saved_at = time.monotonic()

    async def done(self, outcome: Outcome | None) -> None:
        final = JobDone(
            job_id=self.job.job_id,
            attempt=self.job.attempt,
            chunks=self.seq,
            chars=self.chars,
            sha256=self.digest.hexdigest(),
            from_seq=self.window,
            texts=self.texts[self.window :],
            prompt_eval_count=outcome.prompt_tokens if outcome else None,
            eval_count=outcome.completion_tokens if outcome else None,
            done_reason=outcome.done_reason if outcome else None,
            tool_calls=outcome.tool_calls if outcome else [],
        )
        self.transcript.final = final
        await self._progress(final)

    async def fail(self, reason: str, *, retryable: bool) -> None:
        final = JobFailed(
            job_id=self.job.job_id,
            attempt=self.job.attempt,
            reason=reason,
            retryable=retryable,
            chunks=self.seq,
            from_seq=self.window,
            texts=self.texts[self.window :],
        )
        self.transcript.final = final
        await self._progress(final)
