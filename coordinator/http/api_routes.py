"""The coordinator's side of the OpenAI-compatible API: the webapp (service token) passes
a client's API key and its request here; the key is checked, limits applied, and the
request queued as a thread of its own. The webapp streams the reply to the client. Keys
are checked by :class:`coordinator.keys.checks.KeyChecker` (scrypt off the database
thread, remembered for a minute)."""

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request

from coordinator.chat.store import ChatStore
from coordinator.db.runner import DbRunner
from coordinator.errors import Busy, CoordinatorError
from coordinator.http.responses import error, install_error_handlers, json_response
from coordinator.jobs.admission import Admission
from coordinator.keys.api_keys import ApiKeyInfo, ApiKeyStore
from coordinator.keys.checks import KeyChecker
from coordinator.metrics import Metrics
from coordinator.workers.store import WorkerStore
from farm_protocol.chat import MessageView, SendMessageResponse
from farm_runtime.http_serving import request_json

_MAX_TURNS = 200


class InvalidKey(CoordinatorError):
    """No such live API key."""


class Turn(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=100_000)


class CompletionRequest(BaseModel):
    api_key: str = Field(max_length=200)
    model: str = Field(min_length=1, max_length=200)
    messages: list[Turn] = Field(min_length=1, max_length=_MAX_TURNS)


class KeyCheck(BaseModel):
    api_key: str = Field(max_length=200)


@dataclass
class ApiContext:
    runner: DbRunner
    chat: ChatStore
    keys: ApiKeyStore
    workers: WorkerStore
    service_token: str
    admission: Admission
    max_queued: int
    metrics: Metrics
    default_models: list[str]
    publish_message: Callable[[MessageView], Awaitable[None]]
    job_queued: Callable[[], None]


def create_api_blueprint(ctx: ApiContext) -> Blueprint:
    bp = Blueprint("api_clients", __name__, url_prefix="/api/v1/programmatic")
    keys = KeyChecker(ctx.runner, ctx.keys)

    @bp.before_request
    async def _authenticate() -> Response | None:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not ctx.service_token or not hmac.compare_digest(supplied, ctx.service_token):
            return error(401, "missing or wrong service token")
        return None

    async def checked(key: str) -> ApiKeyInfo:
        info = await keys.check(key)
        if info is None:
            raise InvalidKey("invalid API key")
        return info

    @bp.post("/keys/check")
    async def check() -> Response:
        req = KeyCheck.model_validate(await request_json(request) or {})
        info = await checked(req.api_key)
        return Response(f'{{"key_id": "{info.id}"}}', content_type="application/json")

    @bp.get("/models")
    async def models() -> Response:
        return json_response(await ctx.runner.call(ctx.workers.fleet_models, ctx.default_models))

    @bp.post("/completions")
    async def completions() -> Response:
        data = await request_json(request)
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        req = CompletionRequest.model_validate(data)
        info = await checked(req.api_key)
        model = await ctx.runner.call(ctx.workers.offered_model, req.model, ctx.default_models)
        if model is None:
            return error(404, f"the model {req.model!r} does not exist on this farm")
        try:
            ctx.admission.check(model)
            new = await ctx.runner.call(
                ctx.chat.start_api_conversation,
                info,
                model,
                [(t.role, t.content) for t in req.messages],
                max_queued=ctx.max_queued,
            )
        except Busy as busy:
            ctx.metrics.shed.labels(busy.reason).inc()
            raise
        reply: MessageView = new.reply
        await ctx.publish_message(reply)
        ctx.job_queued()
        return json_response(SendMessageResponse(user_message=new.user_message, reply=reply), 201)

    @bp.errorhandler(InvalidKey)
    async def _invalid_key(exc: InvalidKey) -> Response:
        return error(401, str(exc))

    install_error_handlers(bp)
    return bp
