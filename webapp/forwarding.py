"""The chat's JSON API, passed on to the coordinator's chat API as it is: one table of
routes, with the browser's session and address added (the coordinator answers)."""

import functools
from typing import Any

from quart import Quart, Response, g, request

from farm_protocol.ids import check_id
from farm_runtime.http_serving import request_json
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable
from webapp.responses import json_error
from webapp.settings import WebappSettings

# The webapp's chat routes, each passed on to the coordinator's chat API as it is: (method,
# the webapp's route, the coordinator's path under /api/v1/chat).
FORWARDED = [
    ("GET", "/api/me", "/me"),
    ("POST", "/api/me/name", "/me/name"),
    ("GET", "/api/farm", "/farm"),
    ("GET", "/api/models", "/models"),
    ("GET", "/api/threads", "/threads"),
    ("POST", "/api/threads", "/threads"),
    ("GET", "/api/threads/<thread_id>", "/threads/{thread_id}"),
    ("GET", "/api/threads/<thread_id>/messages", "/threads/{thread_id}/messages"),
    ("POST", "/api/threads/<thread_id>/join", "/threads/{thread_id}/join"),
    ("POST", "/api/threads/<thread_id>/leave", "/threads/{thread_id}/leave"),
    ("POST", "/api/threads/<thread_id>/rename", "/threads/{thread_id}/rename"),
    ("DELETE", "/api/threads/<thread_id>", "/threads/{thread_id}"),
    ("POST", "/api/threads/<thread_id>/messages", "/threads/{thread_id}/messages"),
    (
        "POST",
        "/api/threads/<thread_id>/messages/<message_id>/stop",
        "/threads/{thread_id}/messages/{message_id}/stop",
    ),
    (
        "POST",
        "/api/threads/<thread_id>/messages/<message_id>/retry",
        "/threads/{thread_id}/messages/{message_id}/retry",
    ),
    (
        "POST",
        "/api/threads/<thread_id>/messages/<message_id>/edit",
        "/threads/{thread_id}/messages/{message_id}/edit",
    ),
    ("POST", "/api/threads/<thread_id>/branch", "/threads/{thread_id}/branch"),
]


def install_forwarding(
    app: Quart, settings: WebappSettings, coordinator: CoordinatorClient
) -> None:
    """The routes of :data:`FORWARDED` on ``app``."""

    async def forward(method: str, path: str, body: Any = None) -> Response:
        try:
            upstream = await coordinator.request(
                method,
                path,
                g.session,
                body,
                client=client_address(settings.forwarded_for_hops),
                params=dict(request.args) or None,
            )
        except CoordinatorUnavailable:
            return json_error(503, "the chat service is unavailable; try again shortly")
        response = Response(
            upstream.content, status=upstream.status_code, content_type="application/json"
        )
        if "Retry-After" in upstream.headers:
            response.headers["Retry-After"] = upstream.headers["Retry-After"]
        return response

    async def json_body() -> Any:
        data = await request_json(request)
        return data if isinstance(data, dict) else {}

    async def forward_as(method: str, upstream: str, **params: str) -> Response:
        """Pass the request on to the coordinator's chat API, at ``upstream`` with the
        route's parameters (each checked as an id) filled in."""
        path = upstream.format(
            **{name: check_id(value, "thread id") for name, value in params.items()}
        )
        return await forward(method, path, await json_body() if method == "POST" else None)

    for method, rule, upstream in FORWARDED:
        app.add_url_rule(
            rule,
            f"forward {method} {rule}",
            functools.partial(forward_as, method, upstream),
            methods=[method],
        )


def client_address(hops: int) -> str | None:
    """The browser's address: the peer's, or behind ``hops`` trusted proxies the entry
    they added to X-Forwarded-For (earlier entries are the client's own claims)."""
    if hops:
        chain = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        chain = [a for a in chain if a]
        if len(chain) >= hops:
            return chain[-hops]
    return request.remote_addr
