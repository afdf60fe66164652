"""The chat API the webapp calls (bearer service token; the acting browser session in the
``X-Farm-Session`` header). Bad input gets a 4xx with a clear message, never a 500."""

import contextlib
import functools
import time
from collections.abc import Callable
from typing import TypeVar

from quart import Blueprint, Response, request

from coordinator.chat.rate_limits import spending
from coordinator.chat.requests import NewReply
from coordinator.errors import Busy, Conflict, NotFound
from coordinator.http.admission import admit_limit, refused
from coordinator.http.context import HttpContext
from coordinator.http.responses import error, json_response, read_body, wrong_token
from coordinator.http.routing import Route, blueprint
from coordinator.jobs import reports
from farm_protocol.chat import (
    CLIENT_HEADER,
    SESSION_HEADER,
    CreateThreadRequest,
    RenameThreadRequest,
    SendMessageRequest,
    SendMessageResponse,
    ShowVersionRequest,
    UserView,
)
from farm_protocol.ids import check_id

T = TypeVar("T")


async def authenticate(ctx: HttpContext) -> Response | None:
    refused = wrong_token(ctx.service_token, "service token")
    if refused is None and len(request.headers.get(SESSION_HEADER, "")) < 16:
        return error(400, f"missing {SESSION_HEADER} header")
    return refused


async def _user(ctx: HttpContext) -> UserView:
    """The acting user; a session seen for the first time gets a new identity, within
    its address's allowance."""
    token = request.headers[SESSION_HEADER]
    found = await ctx.runner.call(ctx.chat.identity.find_user, token)
    if found is not None:
        return found
    address = request.headers.get(CLIENT_HEADER, "unknown")
    await ctx.runner.call(ctx.limits.take, "new_user", address)
    return await ctx.runner.call(ctx.chat.identity.session_user, token)


async def _viewer(ctx: HttpContext) -> str | None:
    """The asking user's id if this session has one (reading creates no identity)."""
    found = await ctx.runner.call(ctx.chat.identity.find_user, request.headers[SESSION_HEADER])
    return found.user_id if found else None


async def _admitted(ctx: HttpContext, who: str, model: str, queue_it: Callable[..., T]) -> T:
    """Queue a request within the user's rate limit, unless the farm is shedding load
    for ``model`` or could not start it before its queue deadline (see
    coordinator.jobs.capacity). A request refused for any other reason gives its token
    back."""
    async with spending(ctx.runner, ctx.limits, "send", who):
        limit = await admit_limit(ctx, model)
        queue_it = functools.partial(queue_it, limit=limit, max_queued=ctx.max_queued)
        try:
            return await ctx.runner.call(queue_it)
        except Busy as busy:
            raise refused(ctx, model, busy) from None


async def _publish_members(ctx: HttpContext, thread_id: str) -> None:
    members = await ctx.runner.call(ctx.chat.threads.members, thread_id)
    await ctx.bus.members(thread_id, members)


async def me(ctx: HttpContext) -> Response:
    return json_response(await _user(ctx))


async def rename(ctx: HttpContext) -> Response:
    """A new random name (the original's re-roll), shown in every thread joined."""
    user = await _user(ctx)
    await ctx.runner.call(ctx.limits.take, "rename", user.user_id)
    renamed, threads = await ctx.runner.call(ctx.chat.identity.rename, user.user_id)
    for thread_id in threads:
        await _publish_members(ctx, thread_id)
    return json_response(renamed)


async def farm(ctx: HttpContext) -> Response:
    """Anyone may watch (every open farm page asks every 2 s): computed at most once a
    second, whoever asks."""
    cache, now = ctx.farm_page, time.monotonic()
    if cache.at < now - cache.max_age_s:
        view = await ctx.runner.call(
            reports.farm_view, ctx.runner.db, ctx.grace_s, ctx.job_lifetime_s
        )
        cache.at, cache.body = now, view.model_dump_json()
    return Response(cache.body, content_type="application/json")


async def models(ctx: HttpContext) -> Response:
    return json_response(await ctx.runner.call(ctx.presence.fleet_models, ctx.default_models))


async def threads(ctx: HttpContext) -> Response:
    user = await _user(ctx)
    return json_response(await ctx.runner.call(ctx.chat.threads.list_threads, user.user_id))


async def create_thread(ctx: HttpContext) -> Response:
    req = await read_body(CreateThreadRequest)
    user = await _user(ctx)
    await ctx.runner.call(ctx.limits.take, "thread", user.user_id)
    made = await ctx.runner.call(ctx.chat.threads.create_thread, user.user_id, req.system_prompt)
    return json_response(made, 201)


async def snapshot(ctx: HttpContext, thread_id: str) -> Response:
    """Anyone with the link may read a thread (the original's sharing)."""
    tid = check_id(thread_id, "thread id")
    return json_response(await ctx.runner.call(ctx.chat.threads.snapshot, tid, await _viewer(ctx)))


async def older(ctx: HttpContext, thread_id: str) -> Response:
    before = request.args.get("before", "")
    if not before:
        raise ValueError("say which message to page back from: ?before=<message id>")
    tid, mid = check_id(thread_id, "thread id"), check_id(before, "message id")
    return json_response(await ctx.runner.call(ctx.chat.threads.older_messages, tid, mid))


async def join(ctx: HttpContext, thread_id: str) -> Response:
    tid = check_id(thread_id, "thread id")
    user = await _user(ctx)
    if await ctx.runner.call(ctx.chat.threads.is_member, tid, user.user_id):
        return json_response(await ctx.runner.call(ctx.chat.threads.members, tid))
    async with spending(ctx.runner, ctx.limits, "join", user.user_id):
        members = await ctx.runner.call(ctx.chat.threads.join, tid, user.user_id)
    await ctx.bus.members(tid, members)
    return json_response(members)


async def leave(ctx: HttpContext, thread_id: str) -> Response:
    tid = check_id(thread_id, "thread id")
    user = await _user(ctx)
    members = await ctx.runner.call(ctx.chat.threads.leave, tid, user.user_id)
    await ctx.bus.members(tid, members)
    return json_response(members)


async def rename_thread(ctx: HttpContext, thread_id: str) -> Response:
    req = await read_body(RenameThreadRequest)
    tid = check_id(thread_id, "thread id")
    user = await _user(ctx)
    thread = await ctx.runner.call(ctx.chat.threads.rename, tid, user.user_id, req.title)
    await ctx.bus.thread_changed(tid, thread)
    return json_response(thread)


async def delete_thread(ctx: HttpContext, thread_id: str) -> Response:
    """The owner deletes the chat for everyone: its replies still running are stopped
    first (their workers free at once), then it is gone, and its watchers are told."""
    tid = check_id(thread_id, "thread id")
    user = await _user(ctx)
    for job_id in await ctx.runner.call(ctx.chat.threads.live_jobs, tid, user.user_id):
        await ctx.cancel(job_id, "the chat was deleted")
    await ctx.runner.call(ctx.chat.threads.delete, tid, user.user_id)
    await ctx.bus.thread_changed(tid, None)
    return json_response({"thread_id": tid, "deleted": True})


async def send(ctx: HttpContext, thread_id: str) -> Response:
    req = await read_body(SendMessageRequest)
    user = await _user(ctx)
    tid = check_id(thread_id, "thread id")
    model = await choose_model(ctx, req.model)
    joining = not await ctx.runner.call(ctx.chat.threads.is_member, tid, user.user_id)
    send_it = ctx.chat.requests.send_message
    queue_it = functools.partial(send_it, user.user_id, tid, req.text, model)
    # sending to a shared thread joins it, within the joining allowance
    joins = spending(ctx.runner, ctx.limits, "join", user.user_id)
    async with joins if joining else contextlib.nullcontext():
        new = await _admitted(ctx, user.user_id, model, queue_it)
    if new.joined:
        await _publish_members(ctx, tid)
    return await _queued(ctx, new)


async def _queued(ctx: HttpContext, new: NewReply) -> Response:
    """Tell the thread's watchers of a message and its queued reply, wake the
    dispatcher, and answer with both."""
    await ctx.bus.message(new.user_message)
    await ctx.bus.message(new.reply)
    ctx.wake_dispatcher()
    return json_response(SendMessageResponse(user_message=new.user_message, reply=new.reply), 201)


async def edit(ctx: HttpContext, thread_id: str, message_id: str) -> Response:
    """A new version of the user's own message, answered anew: the thread branches there
    (the earlier version stays, a switch away) and every watcher is told."""
    req = await read_body(SendMessageRequest)
    user = await _user(ctx)
    tid, mid = check_id(thread_id, "thread id"), check_id(message_id, "message id")
    model = await choose_model(ctx, req.model)
    edit_it = ctx.chat.requests.edit_message
    new = await _admitted(
        ctx,
        user.user_id,
        model,
        functools.partial(edit_it, user.user_id, tid, mid, req.text, model),
    )
    # the watchers learn of the branch it starts (the thread's new leaf)
    await ctx.bus.thread_changed(tid, await ctx.runner.call(ctx.chat.threads.thread, tid))
    return await _queued(ctx, new)


async def show_version(ctx: HttpContext, thread_id: str) -> Response:
    """A member switches the thread to another version of an edited message."""
    req = await read_body(ShowVersionRequest)
    user = await _user(ctx)
    tid = check_id(thread_id, "thread id")
    show = ctx.chat.threads.show_version
    thread = await ctx.runner.call(show, tid, user.user_id, req.message_id)
    await ctx.bus.thread_changed(tid, thread)
    return json_response(thread)


async def retry(ctx: HttpContext, thread_id: str, message_id: str) -> Response:
    user = await _user(ctx)
    tid = check_id(thread_id, "thread id")
    model = await ctx.runner.call(ctx.chat.requests.reply_model, tid, message_id)
    queue_it = functools.partial(ctx.chat.requests.retry_reply, user.user_id, tid, message_id)
    view = await _admitted(ctx, user.user_id, model, queue_it)
    await ctx.bus.message(view)
    ctx.wake_dispatcher()
    return json_response(view, 201)


async def stop(ctx: HttpContext, thread_id: str, message_id: str) -> Response:
    user = await _user(ctx)
    tid = check_id(thread_id, "thread id")
    job_id = await ctx.runner.call(ctx.chat.requests.job_to_stop, user.user_id, tid, message_id)
    view = await ctx.cancel(job_id, f"stopped by {user.name}")
    if view is None:
        raise Conflict("this reply has already ended")
    return json_response(view)


async def choose_model(ctx: HttpContext, requested: str | None) -> str:
    """The model a request gets (the farm's default when none is asked for)."""
    model = await ctx.runner.call(ctx.presence.offered_model, requested, ctx.default_models)
    if model is None:
        raise NotFound(f"model {requested!r} is not served by this farm")
    return model


ROUTES = [
    Route("GET", "/me", me),
    Route("POST", "/me/name", rename),
    Route("GET", "/farm", farm),
    Route("GET", "/models", models),
    Route("GET", "/threads", threads),
    Route("POST", "/threads", create_thread),
    Route("GET", "/threads/<thread_id>", snapshot),
    Route("GET", "/threads/<thread_id>/messages", older),
    Route("POST", "/threads/<thread_id>/join", join),
    Route("POST", "/threads/<thread_id>/leave", leave),
    Route("POST", "/threads/<thread_id>/rename", rename_thread),
    Route("DELETE", "/threads/<thread_id>", delete_thread),
    Route("POST", "/threads/<thread_id>/messages", send),
    Route("POST", "/threads/<thread_id>/messages/<message_id>/retry", retry),
    Route("POST", "/threads/<thread_id>/messages/<message_id>/edit", edit),
    Route("POST", "/threads/<thread_id>/branch", show_version),
    Route("POST", "/threads/<thread_id>/messages/<message_id>/stop", stop),
]


def chat_blueprint(ctx: HttpContext) -> Blueprint:
    return blueprint("chat", "/api/v1/chat", ROUTES, ctx, authenticate)
