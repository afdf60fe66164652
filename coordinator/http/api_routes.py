"""The coordinator's side of the OpenAI-compatible API: the webapp (service token) passes
a client's API key and its request here; the key is checked, limits applied, and the
request queued as a thread of its own. The webapp streams the reply to the client."""

from pydantic import BaseModel, Field
from quart import Blueprint, Response

from coordinator.errors import Busy, CoordinatorError
from coordinator.http.admission import admit_limit, refused
from coordinator.http.context import HttpContext
from coordinator.http.responses import error, json_response, read_body, wrong_token
from coordinator.http.routing import Route, blueprint
from coordinator.jobs import reports
from coordinator.keys.api_keys import ApiKeyInfo, check_api_key
from farm_protocol.chat import SendMessageResponse
from farm_protocol.ids import TopicId
from farm_protocol.joining import Enrolled
from farm_protocol.payloads import Generation


class InvalidKey(CoordinatorError):
    """No such live API key."""


class CompletionRequest(Generation):
    """An API client's request, translated by the webapp (``Generation``), with its key."""

    api_key: str = Field(max_length=200)
    model: str = Field(min_length=1, max_length=200)
    # the new thread's id, from the webapp (it subscribes to the thread's events first)
    thread_id: TopicId | None = None


class KeyCheck(BaseModel):
    api_key: str = Field(max_length=200)


async def authenticate(ctx: HttpContext) -> Response | None:
    return wrong_token(ctx.service_token, "service token")


async def _checked(ctx: HttpContext, key: str) -> ApiKeyInfo:
    info = await check_api_key(ctx.runner, ctx.api_keys, key)
    if info is None:
        raise InvalidKey("invalid API key")
    return info


async def check(ctx: HttpContext) -> Response:
    req = await read_body(KeyCheck, empty_is_default=True)
    info = await _checked(ctx, req.api_key)
    return json_response({"key_id": info.id})


async def models(ctx: HttpContext) -> Response:
    return json_response(await ctx.runner.call(ctx.presence.fleet_models, ctx.default_models))


async def completions(ctx: HttpContext) -> Response:
    req = await read_body(CompletionRequest)
    info = await _checked(ctx, req.api_key)
    model = await ctx.runner.call(ctx.presence.offered_model, req.model, ctx.default_models)
    if model is None:
        return error(404, f"the model {req.model!r} does not exist on this farm")
    limit = await admit_limit(ctx, model)
    try:
        new = await ctx.runner.call(
            ctx.chat.requests.start_api_conversation,
            info,
            model,
            Generation.model_validate(req.model_dump(include=set(Generation.model_fields))),
            max_queued=ctx.max_queued,
            limit=limit,
            thread_id=req.thread_id,
        )
    except Busy as busy:
        raise refused(ctx, model, busy) from None
    await ctx.bus.message(new.reply)
    ctx.wake_dispatcher()
    return json_response(SendMessageResponse(user_message=new.user_message, reply=new.reply), 201)


class EnrolRequest(BaseModel):
    token: str = Field(min_length=20, max_length=200)


async def enrol(ctx: HttpContext) -> Response:
    """A new worker's one-time token, for its key (``fleet-worker join``, through the
    webapp). The token is spent first; if the key cannot be made (the broker did not
    answer), it is given back for another try."""
    req = await read_body(EnrolRequest)
    worker_id = await ctx.runner.call(ctx.enrolments.redeem, req.token)
    try:
        key, _ = await ctx.provisioner.new_key(ctx.runner, ctx.registry, worker_id)
    except BaseException:
        await ctx.runner.call(ctx.enrolments.give_back, req.token)
        raise
    return json_response(Enrolled(worker_id=worker_id, api_key=key).model_dump())


class CancelRequest(BaseModel):
    api_key: str = Field(max_length=200)
    job_id: TopicId
    reason: str = Field(default="the client went away", max_length=200)


async def cancel(ctx: HttpContext) -> Response:
    """An API client hung up: stop its job (only a job its own key asked for)."""
    req = await read_body(CancelRequest)
    info = await _checked(ctx, req.api_key)
    found = await ctx.runner.call(reports.job, ctx.runner.db, req.job_id)
    if found is None or found.api_key_id != info.id:
        return error(404, f"no job {req.job_id} for this key")
    view = await ctx.cancel(req.job_id, req.reason)
    return json_response({"cancelled": view is not None})


ROUTES = [
    Route("POST", "/enrol", enrol),
    Route("POST", "/cancel", cancel),
    Route("POST", "/keys/check", check),
    Route("GET", "/models", models),
    Route("POST", "/completions", completions),
]


def api_blueprint(ctx: HttpContext) -> Blueprint:
    bp = blueprint("api_clients", "/api/v1/programmatic", ROUTES, ctx, authenticate)

    @bp.errorhandler(InvalidKey)
    async def _invalid_key(exc: InvalidKey) -> Response:
        return error(401, str(exc))

    return bp
