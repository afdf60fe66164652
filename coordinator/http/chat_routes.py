"""The chat HTTP API the webapp calls (bearer service token; the acting browser session
in ``X-Farm-Session``). Bad input gets a 4xx with a clear message, never a 500."""

import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from quart import Blueprint, Response, request

from coordinator.chat.rate_limits import RateLimits
from coordinator.chat.store import ChatStore
from coordinator.db.runner import DbRunner
from coordinator.errors import (
    Busy,
    Conflict,
    NotFound,
)
from coordinator.http.responses import error, install_error_handlers, json_response
from coordinator.jobs import reports
from coordinator.jobs.admission import Admission
from coordinator.metrics import Metrics
from coordinator.workers.store import WorkerStore
from farm_protocol.chat import (
    CLIENT_HEADER,
    SESSION_HEADER,
    CreateThreadRequest,
    MemberView,
    MessageView,
    SendMessageRequest,
    SendMessageResponse,
    UserView,
)
from farm_protocol.ids import check_id
from farm_runtime.http_serving import request_json

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    metrics: Metrics
    limits: RateLimits
    job_lifetime_s: float  # the queue plus the reply deadline: no job lives longer
    publish_members: Callable[[str, list[MemberView]], Awaitable[None]]


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
        """The acting user; a session seen for the first time gets a new identity, within
        its address's allowance."""
        token = request.headers[SESSION_HEADER]
        found = await ctx.runner.call(ctx.chat.find_user, token)
        if found is not None:
            return found
        ctx.limits.take("new_user", request.headers.get(CLIENT_HEADER, "unknown"))
        return await ctx.runner.call(ctx.chat.session_user, token)

    async def viewer() -> str | None:
        """The asking user's id if this session has one (reading creates no identity)."""
        found = await ctx.runner.call(ctx.chat.find_user, request.headers[SESSION_HEADER])
        return found.user_id if found else None

    async def body(model: type[BaseModel]) -> Any:
        data = await request_json(request)
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return model.model_validate(data)

    async def admitted(who: str, model: str, queue_it: Callable[[], T]) -> T:
        """Queue a request within the user's rate limit, unless the farm is shedding load
        for ``model``. A request refused for any other reason gives its token back."""
        with ctx.limits.spend("send", who):
            try:
                ctx.admission.check(model)
                return await ctx.runner.call(queue_it)
            except Busy as refused:
                ctx.metrics.shed.labels(refused.reason).inc()
                raise

    @bp.get("/me")
    async def me() -> Response:
        return json_response(await user())

    @bp.post("/me/name")
    async def rename() -> Response:
        """A new random name (the original's re-roll), shown in every thread joined."""
        me = await user()
        ctx.limits.take("rename", me.user_id)
        renamed, threads = await ctx.runner.call(ctx.chat.rename, me.user_id)
        for thread_id in threads:
            await ctx.publish_members(thread_id, await ctx.runner.call(ctx.chat.members, thread_id))
        return json_response(renamed)

    farm_cache: list[tuple[float, str]] = []

    @bp.get("/farm")
    async def farm() -> Response:
        """Anyone may watch (every open farm page asks every 2 s): computed at most once
        a second, whoever asks."""
        now = time.monotonic()
        if not farm_cache or farm_cache[0][0] < now - 1.0:
            view = await ctx.runner.call(reports.farm_view, ctx.workers.grace_s, ctx.job_lifetime_s)
            farm_cache[:] = [(now, view.model_dump_json())]
        return Response(farm_cache[0][1], content_type="application/json")

    @bp.get("/models")
    async def models() -> Response:
        return json_response(await ctx.runner.call(ctx.workers.fleet_models, ctx.default_models))

    @bp.get("/threads")
    async def threads() -> Response:
        me = await user()
        return json_response(await ctx.runner.call(ctx.chat.list_threads, me.user_id))

    @bp.post("/threads")
    async def create_thread() -> Response:
        req: CreateThreadRequest = await body(CreateThreadRequest)
        me = await user()
        ctx.limits.take("thread", me.user_id)
        return json_response(
            await ctx.runner.call(ctx.chat.create_thread, me.user_id, req.system_prompt), 201
        )

    @bp.get("/threads/<thread_id>")
    async def snapshot(thread_id: str) -> Response:
        """Anyone with the link may read a thread (the original's sharing)."""
        tid = check_id(thread_id, "thread id")
        return json_response(await ctx.runner.call(ctx.chat.snapshot, tid, await viewer()))

    @bp.get("/threads/<thread_id>/messages")
    async def older(thread_id: str) -> Response:
        before = request.args.get("before", "")
        if not before:
            raise ValueError("say which message to page back from: ?before=<message id>")
        tid = check_id(thread_id, "thread id")
        return json_response(
            await ctx.runner.call(ctx.chat.older_messages, tid, check_id(before, "message id"))
        )

    @bp.post("/threads/<thread_id>/join")
    async def join(thread_id: str) -> Response:
        tid = check_id(thread_id, "thread id")
        me = await user()
        if await ctx.runner.call(ctx.chat.is_member, tid, me.user_id):
            return json_response(await ctx.runner.call(ctx.chat.members, tid))
        with ctx.limits.spend("join", me.user_id):
            members = await ctx.runner.call(ctx.chat.join, tid, me.user_id)
        await ctx.publish_members(tid, members)
        return json_response(members)

    @bp.post("/threads/<thread_id>/leave")
    async def leave(thread_id: str) -> Response:
        tid = check_id(thread_id, "thread id")
        me = await user()
        members = await ctx.runner.call(ctx.chat.leave, tid, me.user_id)
        await ctx.publish_members(tid, members)
        return json_response(members)

    @bp.post("/threads/<thread_id>/messages")
    async def send(thread_id: str) -> Response:
        req: SendMessageRequest = await body(SendMessageRequest)
        me = await user()
        tid = check_id(thread_id, "thread id")
        model = await _choose_model(ctx, req.model)
        joining = not await ctx.runner.call(ctx.chat.is_member, tid, me.user_id)
        # sending to a shared thread joins it, within the joining allowance
        with ctx.limits.spend("join", me.user_id) if joining else contextlib.nullcontext():
            new = await admitted(
                me.user_id,
                model,
                functools.partial(
                    ctx.chat.send_message,
                    me.user_id,
                    tid,
                    req.text,
                    model,
                    max_queued=ctx.max_queued,
                ),
            )
        if new.joined:
            await ctx.publish_members(tid, await ctx.runner.call(ctx.chat.members, tid))
        await ctx.publish_message(new.user_message)
        await ctx.publish_message(new.reply)
        ctx.job_queued()
        return json_response(
            SendMessageResponse(user_message=new.user_message, reply=new.reply), 201
        )

    @bp.post("/threads/<thread_id>/messages/<message_id>/retry")
    async def retry(thread_id: str, message_id: str) -> Response:
        me = await user()
        tid = check_id(thread_id, "thread id")
        model = await ctx.runner.call(ctx.chat.reply_model, tid, message_id)
        view = await admitted(
            me.user_id,
            model,
            functools.partial(
                ctx.chat.retry_reply, me.user_id, tid, message_id, max_queued=ctx.max_queued
            ),
        )
        await ctx.publish_message(view)
        ctx.job_queued()
        return json_response(view, 201)

    @bp.post("/threads/<thread_id>/messages/<message_id>/stop")
    async def stop(thread_id: str, message_id: str) -> Response:
        me = await user()
        job_id = await ctx.runner.call(
            ctx.chat.job_to_stop, me.user_id, check_id(thread_id, "thread id"), message_id
        )
        view = await ctx.cancel(job_id, f"stopped by {me.name}")
        if view is None:
            raise Conflict("this reply has already ended")
        return json_response(view)

    install_error_handlers(bp)
    return bp


async def _choose_model(ctx: ChatContext, requested: str | None) -> str:
    model = await ctx.runner.call(ctx.workers.offered_model, requested, ctx.default_models)
    if model is None:
        raise NotFound(f"model {requested!r} is not served by this farm")
    return model
