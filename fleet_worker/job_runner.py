"""Running one job: accepted -> chunks (with sequence numbers) -> done or failed."""

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from farm_protocol import topics
from farm_protocol.codec import encode
from farm_protocol.payloads import JobAccepted, JobAssignment, JobChunk, JobDone, JobFailed
from farm_runtime.outbox import Outbox
from farm_runtime.queues import get_within
from fleet_worker.coalesce import DELIMITERS, Coalescer
from fleet_worker.llm import LlmError, OllamaBackend
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
        Ollama stream at once and sends nothing more: the coordinator already ended it."""
        emitter = _Emitter(self.outbox, self.worker_id, job, self.transcripts)
        started = time.monotonic()
        await emitter.send(
            JobAccepted(job_id=job.job_id, attempt=job.attempt, session_id=session_id)
        )
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
            first = True  # no token yet (the first-token timeout applies)
            started = False  # no text sent yet
            while True:
                limit = (
                    self.settings.first_token_timeout_s if first else self.settings.token_timeout_s
                )
                wait = coalescer.wait_s()
                try:
                    item = await get_within(tokens, wait if wait is not None else limit)
                except TimeoutError:
                    if wait is None:
                        raise LlmError(
                            "the model stopped producing tokens", retryable=True
                        ) from None
                    await emitter.chunk(coalescer.take())
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, str)
                first = False
                chunk = coalescer.add(item)
                if not started and item:
                    # The first token goes out at once: it is what the user waits for.
                    started = True
                    chunk = chunk or coalescer.take()
                await emitter.chunk(chunk)
            await emitter.chunk(coalescer.take())
            await emitter.done()
        finally:
            pump.cancel()  # closes the HTTP stream to Ollama
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump


async def _pump(stream: AsyncIterator[str], out: asyncio.Queue[object]) -> None:
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
    """Publishes one job's events in order, keeping the running sequence and checksum."""

    def __init__(
        self, outbox: Outbox, worker_id: str, job: JobAssignment, transcripts: Transcripts
    ) -> None:
        self.outbox = outbox
        self.transcripts = transcripts
        self.job = job
        self.topic = topics.job_events(worker_id, job.job_id)
        self.seq = 0
        self.chars = 0
        self.digest = hashlib.sha256()

    async def send(self, payload: JobAccepted | JobChunk | JobDone | JobFailed) -> None:
        self.transcripts.record(payload)
        await self.outbox.put(self.topic, encode(payload), qos=topics.QOS_JOB_EVENTS)

    async def chunk(self, text: str | None) -> None:
        if not text:
            return
        await self.send(
            JobChunk(job_id=self.job.job_id, attempt=self.job.attempt, seq=self.seq, text=text)
        )
        self.seq += 1
        self.chars += len(text)
        self.digest.update(text.encode())

    async def done(self) -> None:
        await self.send(
            JobDone(
                job_id=self.job.job_id,
                attempt=self.job.attempt,
                chunks=self.seq,
                chars=self.chars,
                sha256=self.digest.hexdigest(),
            )
        )

    async def fail(self, reason: str, *, retryable: bool) -> None:
        await self.send(
            JobFailed(
                job_id=self.job.job_id,
                attempt=self.job.attempt,
                reason=reason,
                retryable=retryable,
                chunks=self.seq,
            )
        )
