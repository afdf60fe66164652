"""The coordinator's HTTP application: the chat API and the programmatic-clients API (both
for the webapp), the admin API,
``/metrics`` for Prometheus and ``/healthz``."""

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Quart, Response

from coordinator.admin_api import AdminContext, create_admin_blueprint
from coordinator.api_clients import ApiContext, create_api_blueprint
from coordinator.chat_api import ChatContext, create_chat_blueprint


def create_app(chat: ChatContext, admin: AdminContext, api: ApiContext) -> Quart:
    app = Quart("coordinator")
    app.register_blueprint(create_chat_blueprint(chat))
    app.register_blueprint(create_admin_blueprint(admin))
    app.register_blueprint(create_api_blueprint(api))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await chat.runner.call(chat.metrics.render)
        return Response(text, content_type=CONTENT_TYPE_LATEST)

    return app
