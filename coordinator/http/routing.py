"""Routes as plain functions: ``async def view(ctx, **path_params) -> Response``, listed
in a table per area and bound to a blueprint here. Each can be called on its own (inside
a request context) with any :class:`HttpContext`."""

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quart import Blueprint, Response

from coordinator.http.context import HttpContext
from coordinator.http.responses import install_error_handlers

View = Callable[..., Awaitable[Response]]
Check = Callable[[HttpContext], Awaitable[Response | None]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    rule: str
    view: View


def blueprint(
    name: str, prefix: str, routes: Sequence[Route], ctx: HttpContext, check: Check
) -> Blueprint:
    """A blueprint serving ``routes`` under ``prefix``; ``check`` runs before each (a
    response from it, such as a 401, answers instead)."""
    bp = Blueprint(name, __name__, url_prefix=prefix)
    bp.before_request(functools.partial(check, ctx))
    for route in routes:
        bp.add_url_rule(
            route.rule, route.view.__name__, _bound(route.view, ctx), methods=[route.method]
        )
    install_error_handlers(bp)
    return bp


def _bound(view: View, ctx: HttpContext) -> View:
    async def handler(**params: Any) -> Response:
        return await view(ctx, **params)

    handler.__name__ = view.__name__
    return handler
