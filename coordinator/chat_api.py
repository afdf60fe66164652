"""The chat HTTP API the webapp calls (bearer service token; the acting browser session
in ``X-Farm-Session``). Bad input gets a 4xx with a clear message, never a 500."""

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Quart, Response, request

from coordinator.admission import Admission
from coordinator.chat_store import ChatStore
from coordinator.db_runner import DbRunner
from coordinator.errors import (
    Busy,
    Conflict,
    CoordinatorError,
    NotFound,
    RateLimited,
    StoreError,
)
from coordinator.worker_store import WorkerStore
from farm_protocol.chat import (
    CreateThreadRequest,
    ErrorBody,
    MessageView,
    SendMessageRequest,
    SendMessageResponse,
    UserView,
)
from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_protocol.models import display_model, normalize_model

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Farm-Session"


@dataclass(frozen=True, slots=True)
class ChatContext:
    runner: DbRunner
    chat: ChatStore
    workers: WorkerStore
    service_token: str
    default_models: list[str]
    publish_message: Callable[[MessageView], Awaitable[None]]
    job_queued: Callable[[], None]
    admission: Admission
    max_queued: int
    cancel: Callable[[str, str], Awaitable[MessageView | None]]


def _json(model: BaseModel | list[Any], status: int = 200) -> Response:
    if isinstance(model, list):
        body = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        body = model.model_dump_json()
    return Response(body, status=status, content_type="application/json")


def error(status: int, message: str, retry_after_s: float | None = None) -> Response:
    response = _json(ErrorBody(error=message, retry_after_s=retry_after_s), status)
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return response


def create_chat_blueprint(ctx: ChatContext) -> Blueprint:
    bp = Blueprint("chat", __name__, url_prefix="/api/v1/chat")

    @bp.before_request
    async def _authenticate() -> Response | None:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not ctx.service_token or not hmac.compare_digest(supplied, ctx.service_token):
            return error(401, "missing or wrong service token")
        if len(request.headers.get(SESSION_HEADER, "")) < 16:
            return error(400, f"missing {SESSION_HEADER} header")
        return None

    async def user() -> UserView:
        return await ctx.runner.call(ctx.chat.session_user, request.headers[SESSION_HEADER])

    async def body(model: type[BaseModel]) -> Any:
        data = await request.get_json(force=True, silent=True)
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return model.model_validate(data)

    @bp.get("/me")
    async def me() -> Response:
        return _json(await user())

    @bp.get("/models")
    async def models() -> Response:
        return _json(await ctx.runner.call(ctx.workers.fleet_models, ctx.default_models))

    @bp.get("/threads")
    async def threads() -> Response:
        me = await user()
        return _json(await ctx.runner.call(ctx.chat.list_threads, me.user_id))

    @bp.post("/threads")
    async def create_thread() -> Response:
        req: CreateThreadRequest = await body(CreateThreadRequest)
        me = await user()
        return _json(
            await ctx.runner.call(ctx.chat.create_thread, me.user_id, req.system_prompt), 201
        )

    @bp.get("/threads/<thread_id>")
    async def snapshot(thread_id: str) -> Response:
        return _json(await ctx.runner.call(ctx.chat.snapshot, check_id(thread_id, "thread id")))

    @bp.post("/threads/<thread_id>/messages")
    async def send(thread_id: str) -> Response:
        req: SendMessageRequest = await body(SendMessageRequest)
        me = await user()
        model = await _choose_model(ctx, req.model)
        ctx.admission.check(model)
        new = await ctx.runner.call(
            ctx.chat.send_message,
            me.user_id,
            check_id(thread_id, "thread id"),
            req.text,
            model,
            max_queued=ctx.max_queued,
        )
        await ctx.publish_message(new.user_message)
        await ctx.publish_message(new.reply)
        ctx.job_queued()
        return _json(SendMessageResponse(user_message=new.user_message, reply=new.reply), 201)

    @bp.post("/threads/<thread_id>/messages/<message_id>/stop")
    async def stop(thread_id: str, message_id: str) -> Response:
        me = await user()
        job_id = await ctx.runner.call(
            ctx.chat.job_to_stop, me.user_id, check_id(thread_id, "thread id"), message_id
        )
        view = await ctx.cancel(job_id, f"stopped by {me.name}")
        if view is None:
            raise Conflict("this reply has already ended")
        return _json(view)

    @bp.errorhandler(ValidationError)
    async def _invalid(exc: ValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @bp.errorhandler(ValueError)
    async def _bad_value(exc: ValueError) -> Response:
        return error(400, str(exc))

    @bp.errorhandler(CoordinatorError)
    async def _coordinator_error(exc: CoordinatorError) -> Response:
        match exc:
            case NotFound():
                return error(404, str(exc))
            case Conflict():
                return error(409, str(exc))
            case Busy():
                return error(503, str(exc), exc.retry_after_s)
            case RateLimited():
                return error(429, str(exc), exc.retry_after_s)
            case StoreError():
                log.error("store failure: %s", exc)
                return error(503, "the database is unavailable; try again shortly", 5)
        return error(400, str(exc))

    @bp.errorhandler(TopicError)
    async def _bad_id(exc: TopicError) -> Response:
        return error(404, str(exc))

    return bp


async def _choose_model(ctx: ChatContext, requested: str | None) -> str:
    fleet = await ctx.runner.call(ctx.workers.fleet_models, ctx.default_models)
    if requested is None:
        return fleet.default_model or display_model(normalize_model(ctx.default_models[0]))
    known = {normalize_model(m) for m in [*fleet.models, *ctx.default_models]}
    if normalize_model(requested) not in known:
        raise NotFound(f"model {requested!r} is not served by this farm")
    return display_model(normalize_model(requested))


def create_app(ctx: ChatContext) -> Quart:
    app = Quart("coordinator")
    app.register_blueprint(create_chat_blueprint(ctx))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
