"""The admin HTTP API (bearer admin token, JSON): workers and their keys, API keys, jobs,
queue and fleet statistics. ``llama-farm workers ...`` uses the same stores.

A missing or wrong token gets 401; with no admin token configured the API is closed.
"""

import asyncio
import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request

from coordinator.db.runner import DbRunner
from coordinator.errors import Conflict, NotFound
from coordinator.http.responses import error, install_error_handlers
from coordinator.jobs import reports
from coordinator.jobs.admission import Admission
from coordinator.keys.api_keys import ApiKeyStore, issue_key
from coordinator.keys.hashing import hash_key
from coordinator.mqtt.provisioning import Provisioner
from coordinator.workers.store import WorkerStore
from farm_protocol import topics
from farm_protocol.chat import MessageView
from farm_protocol.codec import encode
from farm_protocol.ids import check_id
from farm_protocol.payloads import Drain
from farm_runtime.http_serving import request_json
from farm_runtime.outbox import Outbox


@dataclass(frozen=True, slots=True)
class AdminContext:
    runner: DbRunner
    workers: WorkerStore
    api_keys: ApiKeyStore
    outbox: Outbox
    admin_token: str
    grace_s: float
    admission: Admission
    cancel: Callable[[str, str], Awaitable[MessageView | None]]
    provisioner: Provisioner


class NewWorker(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    worker_id: str | None = None


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    max_concurrent: int = Field(default=4, ge=1, le=1000)


class Reason(BaseModel):
    reason: str = Field(default="requested by an administrator", max_length=500)


def _ok(data: Any, status: int = 200) -> Response:
    body = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return Response(body, status=status, content_type="application/json")


def create_admin_blueprint(ctx: AdminContext) -> Blueprint:
    bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")
    adding = asyncio.Lock()  # workers are added one at a time (see add_worker)

    @bp.before_request
    async def _authenticate() -> Response | None:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not ctx.admin_token:
            return error(401, "the admin API is closed: set FARM_ADMIN_TOKEN to open it")
        if not hmac.compare_digest(supplied.encode(), ctx.admin_token.encode()):
            return error(401, "missing or wrong admin token")
        return None

    async def body(model: type[BaseModel]) -> Any:
        data = await request_json(request)
        if data is None and not await request.get_data():
            data = {}
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return model.model_validate(data)

    # --- workers -------------------------------------------------------------------------

    @bp.get("/workers")
    async def list_workers() -> Response:
        return _ok([asdict(w) for w in await ctx.runner.call(ctx.workers.list_workers)])

    @bp.post("/workers")
    async def add_worker() -> Response:
        req: NewWorker = await body(NewWorker)
        # The key's hash (scrypt, tens of ms) is made off the database thread, which
        # would hold up everyone's database work meanwhile. So the id is chosen before
        # the worker is stored: adds are taken one at a time, and an id taken meanwhile
        # (by another coordinator process) means choosing again.
        async with adding:
            for attempt in range(1, 4):
                wid = await ctx.runner.call(ctx.workers.new_id, req.name, req.worker_id)
                key, nonce = ctx.workers.issue(wid)
                key_hash = await asyncio.to_thread(hash_key, key)
                try:
                    info = await ctx.runner.call(ctx.workers.insert, wid, req.name, key_hash, nonce)
                    break
                except Conflict:
                    if req.worker_id or attempt == 3:
                        raise
        broker = await ctx.provisioner.worker_added(info.id, key)
        return _ok({"worker": asdict(info), "api_key": key, "broker": broker}, 201)

    @bp.get("/workers/<worker_id>")
    async def get_worker(worker_id: str) -> Response:
        return _ok(asdict(await ctx.runner.call(ctx.workers.get, check_id(worker_id, "worker id"))))

    @bp.post("/workers/<worker_id>/rotate")
    async def rotate(worker_id: str) -> Response:
        wid = check_id(worker_id, "worker id")
        key, nonce = await ctx.runner.call(ctx.workers.new_key_for, wid)
        key_hash = await asyncio.to_thread(hash_key, key)  # off the database thread
        broker = await ctx.provisioner.worker_rotated(wid, key)  # disconnects the old key
        await ctx.runner.call(
            functools.partial(ctx.workers.set_key, wid, key_hash=key_hash, nonce=nonce)
        )
        return _ok({"worker_id": wid, "api_key": key, "broker": broker})

    @bp.post("/workers/<worker_id>/revoke")
    async def revoke(worker_id: str) -> Response:
        wid = check_id(worker_id, "worker id")
        await ctx.runner.call(ctx.workers.revoke, wid)
        # Tell it to stop taking jobs (its running jobs are failed over by the janitor),
        # then delete its broker account, which disconnects it.
        await _drain(wid, "this worker's key was revoked")
        await ctx.provisioner.worker_revoked(wid)
        return _ok(asdict(await ctx.runner.call(ctx.workers.get, wid)))

    @bp.post("/workers/<worker_id>/drain")
    async def drain(worker_id: str) -> Response:
        wid = check_id(worker_id, "worker id")
        req: Reason = await body(Reason)
        info = await ctx.runner.call(ctx.workers.get, wid)
        if info.revoked_at is not None:
            raise Conflict(f"worker {wid} is revoked")
        await _drain(wid, req.reason)
        return _ok({"worker_id": wid, "drain": "sent", "online": info.online}, 202)

    async def _drain(worker_id: str, reason: str) -> None:
        await ctx.outbox.put(
            topics.worker_control(worker_id),
            encode(Drain(reason=reason)),
            qos=topics.QOS_CONTROL,
        )

    # --- API keys ------------------------------------------------------------------------

    @bp.get("/api-keys")
    async def list_keys() -> Response:
        return _ok([asdict(k) for k in await ctx.runner.call(ctx.api_keys.list_keys)])

    @bp.post("/api-keys")
    async def add_key() -> Response:
        req: NewApiKey = await body(NewApiKey)
        issued = await asyncio.to_thread(issue_key)  # scrypt: off the database thread
        info, key = await ctx.runner.call(ctx.api_keys.create, req.name, req.max_concurrent, issued)
        return _ok({"api_key": asdict(info), "key": key}, 201)

    @bp.post("/api-keys/<key_id>/revoke")
    async def revoke_key(key_id: str) -> Response:
        kid = check_id(key_id, "API key id")
        await ctx.runner.call(ctx.api_keys.revoke, kid)
        return _ok(asdict(await ctx.runner.call(ctx.api_keys.get, kid)))

    # --- jobs and the queue --------------------------------------------------------------

    @bp.get("/jobs")
    async def list_jobs() -> Response:
        state = request.args.get("state") or None
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise ValueError("limit must be a whole number") from None
        jobs = await ctx.runner.call(reports.list_jobs, state, limit)
        return _ok([j.model_dump() for j in jobs])

    @bp.get("/jobs/<job_id>")
    async def get_job(job_id: str) -> Response:
        info = await ctx.runner.call(reports.job, check_id(job_id, "job id"))
        if info is None:
            raise NotFound(f"no job {job_id}")
        return _ok(info)

    @bp.post("/jobs/<job_id>/cancel")
    async def cancel_job(job_id: str) -> Response:
        jid = check_id(job_id, "job id")
        req: Reason = await body(Reason)
        if await ctx.runner.call(reports.job, jid) is None:
            raise NotFound(f"no job {jid}")
        view = await ctx.cancel(jid, req.reason)
        if view is None:
            raise Conflict(f"job {jid} has already ended")
        return _ok(await ctx.runner.call(reports.job, jid))

    @bp.get("/stats")
    async def stats() -> Response:
        data = (await ctx.runner.call(reports.queue_stats, ctx.grace_s)).model_dump()
        data["shedding"] = ctx.admission.shedding()
        return _ok(data)

    install_error_handlers(bp)
    return bp
