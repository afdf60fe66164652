"""The admin HTTP API (bearer admin token, JSON): workers and their keys, API keys, jobs,
queue and fleet statistics. ``llama-farm workers ...`` takes the same steps.

A missing or wrong token gets 401; with no admin token configured the API is closed.
"""

from dataclasses import asdict

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request

from coordinator.errors import Conflict, NotFound
from coordinator.http.context import HttpContext
from coordinator.http.responses import error, json_response, read_body, wrong_token
from coordinator.http.routing import Route, blueprint
from coordinator.jobs import reports
from coordinator.keys import usage
from farm_protocol.ids import check_id
from farm_protocol.joining import JoinLine


class NewWorker(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    worker_id: str | None = None


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    max_concurrent: int = Field(default=4, ge=1, le=1000)


class Reason(BaseModel):
    reason: str = Field(default="requested by an administrator", max_length=500)


async def authenticate(ctx: HttpContext) -> Response | None:
    if not ctx.admin_token:
        return error(401, "the admin API is closed: set FARM_ADMIN_TOKEN to open it")
    return wrong_token(ctx.admin_token, "admin token")


# --- workers -----------------------------------------------------------------------------


async def list_workers(ctx: HttpContext) -> Response:
    return json_response([asdict(w) for w in await ctx.runner.call(ctx.registry.list_workers)])


async def _join_line(ctx: HttpContext, worker_id: str) -> str | None:
    """A one-time `fleet-worker join` line, when the farm's public addresses are set."""
    if not (ctx.public_url and ctx.public_broker_url):
        return None
    token = await ctx.runner.call(ctx.enrolments.issue, worker_id)
    return JoinLine(broker=ctx.public_broker_url, farm=ctx.public_url, token=token).encode()


async def add_worker(ctx: HttpContext) -> Response:
    req = await read_body(NewWorker, empty_is_default=True)
    info, key = await ctx.runner.call(ctx.registry.add, req.name, req.worker_id)
    broker = await ctx.provisioner.worker_added(info.id, key)
    body = {"worker": asdict(info), "api_key": key, "broker": broker}
    return json_response(body | {"join": await _join_line(ctx, info.id)}, 201)


async def enrol_worker(ctx: HttpContext, worker_id: str) -> Response:
    """A new join line for a worker (the last one expired, or was lost)."""
    info = await ctx.runner.call(ctx.registry.get, check_id(worker_id, "worker id"))
    if info.revoked_at is not None:
        raise Conflict(f"worker {info.id} is revoked")
    line = await _join_line(ctx, info.id)
    if line is None:
        raise Conflict("set FARM_PUBLIC_URL and FARM_PUBLIC_BROKER_URL for join lines")
    return json_response({"worker_id": info.id, "join": line}, 201)


async def get_worker(ctx: HttpContext, worker_id: str) -> Response:
    info = await ctx.runner.call(ctx.registry.get, check_id(worker_id, "worker id"))
    return json_response(asdict(info))


async def rotate(ctx: HttpContext, worker_id: str) -> Response:
    wid = check_id(worker_id, "worker id")
    key, broker = await ctx.provisioner.new_key(ctx.runner, ctx.registry, wid)
    return json_response({"worker_id": wid, "api_key": key, "broker": broker})


async def revoke(ctx: HttpContext, worker_id: str) -> Response:
    wid = check_id(worker_id, "worker id")
    await ctx.runner.call(ctx.registry.revoke, wid)
    # Tell it to stop taking jobs (its running jobs are failed over by the janitor), then
    # delete its broker account, which disconnects it.
    await ctx.bus.drain(wid, "this worker's key was revoked")
    await ctx.provisioner.worker_revoked(wid)
    await ctx.bus.clear_status(wid)  # nobody subscribing later sees it "online"
    return json_response(asdict(await ctx.runner.call(ctx.registry.get, wid)))


async def drain(ctx: HttpContext, worker_id: str) -> Response:
    wid = check_id(worker_id, "worker id")
    req = await read_body(Reason, empty_is_default=True)
    info = await ctx.runner.call(ctx.registry.get, wid)
    if info.revoked_at is not None:
        raise Conflict(f"worker {wid} is revoked")
    await ctx.bus.drain(wid, req.reason)
    return json_response({"worker_id": wid, "drain": "sent", "online": info.online}, 202)


# --- API keys ----------------------------------------------------------------------------


async def list_keys(ctx: HttpContext) -> Response:
    return json_response([asdict(k) for k in await ctx.runner.call(ctx.api_keys.list_keys)])


async def add_key(ctx: HttpContext) -> Response:
    req = await read_body(NewApiKey, empty_is_default=True)
    info, key = await ctx.runner.call(ctx.api_keys.create, req.name, req.max_concurrent)
    return json_response({"api_key": asdict(info), "key": key}, 201)


async def revoke_key(ctx: HttpContext, key_id: str) -> Response:
    kid = check_id(key_id, "API key id")
    await ctx.runner.call(ctx.api_keys.revoke, kid)
    return json_response(asdict(await ctx.runner.call(ctx.api_keys.get, kid)))


async def key_usage(ctx: HttpContext, key_id: str) -> Response:
    """Replies and tokens per day (UTC) for the last ``days`` days (default 30)."""
    kid = check_id(key_id, "API key id")
    try:
        days = int(request.args.get("days", "30"))
    except ValueError:
        raise ValueError("days must be a whole number") from None
    if not 1 <= days <= 366:
        raise ValueError("days must be between 1 and 366")
    key = asdict(await ctx.runner.call(ctx.api_keys.get, kid))
    found = await ctx.runner.call(usage.key_usage, ctx.runner.db, kid, days)
    per_day = [asdict(d) | {"total_tokens": d.total_tokens} for d in found]
    return json_response({"api_key": key, "days": days, "usage": per_day})


# --- jobs and the queue ------------------------------------------------------------------


async def list_jobs(ctx: HttpContext) -> Response:
    state = request.args.get("state") or None
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise ValueError("limit must be a whole number") from None
    jobs = await ctx.runner.call(reports.list_jobs, ctx.runner.db, state, limit)
    return json_response([j.model_dump() for j in jobs])


async def get_job(ctx: HttpContext, job_id: str) -> Response:
    info = await ctx.runner.call(reports.job, ctx.runner.db, check_id(job_id, "job id"))
    if info is None:
        raise NotFound(f"no job {job_id}")
    return json_response(info)


async def cancel_job(ctx: HttpContext, job_id: str) -> Response:
    jid = check_id(job_id, "job id")
    req = await read_body(Reason, empty_is_default=True)
    if await ctx.runner.call(reports.job, ctx.runner.db, jid) is None:
        raise NotFound(f"no job {jid}")
    if await ctx.cancel(jid, req.reason) is None:
        raise Conflict(f"job {jid} has already ended")
    return json_response(await ctx.runner.call(reports.job, ctx.runner.db, jid))


async def stats(ctx: HttpContext) -> Response:
    data = (await ctx.runner.call(reports.queue_stats, ctx.runner.db, ctx.grace_s)).model_dump()
    data["shedding"] = ctx.admission.shedding()
    return json_response(data)


ROUTES = [
    Route("GET", "/workers", list_workers),
    Route("POST", "/workers", add_worker),
    Route("GET", "/workers/<worker_id>", get_worker),
    Route("POST", "/workers/<worker_id>/rotate", rotate),
    Route("POST", "/workers/<worker_id>/enrol", enrol_worker),
    Route("POST", "/workers/<worker_id>/revoke", revoke),
    Route("POST", "/workers/<worker_id>/drain", drain),
    Route("GET", "/api-keys", list_keys),
    Route("POST", "/api-keys", add_key),
    Route("POST", "/api-keys/<key_id>/revoke", revoke_key),
    Route("GET", "/api-keys/<key_id>/usage", key_usage),
    Route("GET", "/jobs", list_jobs),
    Route("GET", "/jobs/<job_id>", get_job),
    Route("POST", "/jobs/<job_id>/cancel", cancel_job),
    Route("GET", "/stats", stats),
]


def admin_blueprint(ctx: HttpContext) -> Blueprint:
    return blueprint("admin", "/api/v1/admin", ROUTES, ctx, authenticate)
