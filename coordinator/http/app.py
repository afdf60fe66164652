"""The coordinator's HTTP application: the chat API and the programmatic-clients API (both
for the webapp), the admin API, ``/metrics`` for Prometheus and ``/healthz``."""

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Quart, Response, request

from coordinator.http.admin_routes import admin_blueprint
from coordinator.http.api_routes import api_blueprint
from coordinator.http.chat_routes import chat_blueprint
from coordinator.http.context import HttpContext
from coordinator.http.responses import error, json_response
from farm_runtime.http_serving import finish_reading_requests


def create_app(ctx: HttpContext) -> Quart:
    app = Quart("coordinator")
    finish_reading_requests(app)
    app.register_blueprint(chat_blueprint(ctx))
    app.register_blueprint(admin_blueprint(ctx))
    app.register_blueprint(api_blueprint(ctx))

    @app.errorhandler(404)
    async def _no_route(_: Exception) -> Response:
        return error(404, f"nothing at {request.path[:200]}")

    @app.errorhandler(405)
    async def _wrong_method(_: Exception) -> Response:
        return error(405, f"{request.method} is not allowed on {request.path[:200]}")

    @app.get("/healthz")
    async def healthz() -> Response:
        problems = await ctx.readiness.problems()
        body = {"status": "unavailable" if problems else "ok", "problems": problems}
        return json_response(body, 503 if problems else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await ctx.runner.call(ctx.metrics.render)
        return Response(text, content_type=CONTENT_TYPE_LATEST)

    return app
