"""The webapp's HTTP application: the pages, the chat's JSON API (passed on to the
coordinator), the OpenAI-compatible API, and the per-thread websocket."""

import json
import secrets
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Quart, Response, g, request, websocket

from farm_protocol.errors import TopicError
from farm_protocol.ids import check_id
from farm_runtime.http_serving import finish_reading_requests, request_json
from webapp.bridge import Bridge
from webapp.coordinator_client import CoordinatorClient, CoordinatorUnavailable
from webapp.forwarding import install_forwarding
from webapp.metrics import WebappMetrics
from webapp.ollama_api import OLLAMA_PATHS, create_ollama_blueprint
from webapp.openai_api import create_openai_blueprint, openai_error
from webapp.responses import json_error
from webapp.settings import WebappSettings
from webapp.static_files import StaticFiles
from webapp.thread_socket import ThreadSocket

STATIC = Path(__file__).parent / "static"
COOKIE = "farm_session"
# Paths for programs (besides /v1/): known by a key or a token, never given a cookie.
NO_SESSION = OLLAMA_PATHS | {"/metrics", "/api/enrol"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(settings: WebappSettings, bridge: Bridge, coordinator: CoordinatorClient) -> Quart:
    app = Quart("webapp", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    finish_reading_requests(app)
    _install_sessions(app, settings)
    _install_pages(app)
    _install_health(app, bridge, coordinator)
    _install_enrolment(app, coordinator)
    _install_metrics(
        app, WebappMetrics(bridge, coordinator, settings.metrics_token.get_secret_value())
    )
    install_forwarding(app, settings, coordinator)
    _install_errors(app, settings)
    app.register_blueprint(create_openai_blueprint(bridge, coordinator, settings.sse_keepalive_s))
    app.register_blueprint(create_ollama_blueprint(bridge, coordinator))

    @app.websocket("/ws/threads/<thread_id>")
    async def thread_socket(thread_id: str) -> None:
        # Websockets skip before_request: the session comes from the handshake's cookie
        # (a browser without one is an anonymous viewer with a throwaway identity).
        session = websocket.cookies.get(COOKIE) or secrets.token_urlsafe(32)
        tid = check_id(thread_id, "thread id")
        # the request's websocket itself (werkzeug's documented way out of a proxy): each
        # send through the proxy would look it up again
        socket = websocket._get_current_object()  # type: ignore[attr-defined]
        await ThreadSocket(bridge, coordinator, tid, session, socket).serve()

    return app


def _install_sessions(app: Quart, settings: WebappSettings) -> None:
    """A browser is known by a random cookie, made on its first request."""

    @app.before_request
    async def _session() -> None:
        if request.path.startswith("/v1/") or request.path in NO_SESSION:
            # An API client is known by its key: no browser session, no cookie.
            g.new_session, g.session = False, ""
            return
        token = request.cookies.get(COOKIE, "")
        g.new_session = len(token) < 32
        g.session = secrets.token_urlsafe(32) if g.new_session else token

    @app.after_request
    async def _set_cookie(response: Response) -> Response:
        if getattr(g, "new_session", False):
            response.set_cookie(
                COOKIE,
                g.session,
                max_age=365 * 86400,
                httponly=True,
                samesite="Lax",
                secure=settings.cookie_secure,
            )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def _install_pages(app: Quart) -> None:
    """The chat and farm pages and their static files (no build step, a strict CSP)."""

    files = StaticFiles(STATIC)

    async def page(name: str) -> Response:
        response = await files.response(name)
        response.headers["Content-Security-Policy"] = CSP
        return response

    @app.get("/")
    @app.get("/t/<thread_id>")
    async def index(thread_id: str | None = None) -> Response:
        return await page("index.html")

    @app.get("/farm")
    async def farm_page() -> Response:
        return await page("farm.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        if name not in files:  # no file system look-up for whatever is asked
            return json_error(404, "no such file")
        return await files.response(name)


def _install_enrolment(app: Quart, coordinator: CoordinatorClient) -> None:
    @app.post("/api/enrol")
    async def enrol() -> Response:
        """A new worker's one-time token for its key (``fleet-worker join``): the only
        thing a worker asks over HTTP, once, on the farm's public address."""
        body = await request_json(request)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            return json_error(400, 'send {"token": "lfe_..."} from the join line')
        try:
            answer = await coordinator.programmatic("POST", "/enrol", {"token": token})
        except CoordinatorUnavailable:
            return json_error(503, "the farm is unavailable; try again shortly")
        return Response(answer.text, status=answer.status_code, content_type="application/json")


def _install_metrics(app: Quart, metrics: WebappMetrics) -> None:
    @app.get("/metrics")
    async def scrape() -> Response:
        if not metrics.allowed(request.headers.get("Authorization", "")):
            return json_error(404, "no metrics here without FARM_METRICS_TOKEN as the bearer")
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def _count(response: Response) -> Response:
        path = request.path
        if path.startswith("/v1/"):
            metrics.api.count("openai", response.status_code)
        elif path in OLLAMA_PATHS:
            metrics.api.count("ollama", response.status_code)
        return response


def _install_health(app: Quart, bridge: Bridge, coordinator: CoordinatorClient) -> None:
    @app.get("/healthz")
    async def healthz() -> Response:
        """200 only when this webapp can serve: a live coordinator and the broker (a load
        balancer sends traffic elsewhere otherwise)."""
        live = coordinator.live()
        problems = [] if live else ["no coordinator answers"]
        if not bridge.ready.is_set():
            problems.append("not connected to the broker")
        body = {
            "status": "unavailable" if problems else "ok",
            "coordinators": f"{len(live)} of {len(coordinator.bases)} answer",
            "broker": "connected" if bridge.ready.is_set() else "disconnected",
            "problems": problems,
        }
        return Response(
            json.dumps(body), status=503 if problems else 200, content_type="application/json"
        )


def _install_errors(app: Quart, settings: WebappSettings) -> None:
    """JSON errors for the APIs (OpenAI's shape under /v1), whatever went wrong."""

    def api_error(status: int, message: str, code: str | None = None) -> Response:
        if request.path.startswith("/v1/") or request.path in NO_SESSION:
            return openai_error(status, message, code=code)
        return json_error(status, message)

    @app.errorhandler(TopicError)
    async def _bad_id(exc: TopicError) -> Response:
        return json_error(404, str(exc))

    @app.errorhandler(413)
    async def _too_large(_: Exception) -> Response:
        # The body was refused unread, so the server closes the connection after this
        # answer: saying so keeps the client from sending its next request on it (a
        # "Server disconnected" for that request, now and then).
        response = api_error(413, f"request larger than {settings.max_request_bytes} bytes")
        response.headers["Connection"] = "close"
        return response

    @app.errorhandler(404)
    async def _no_route(_: Exception) -> Response:
        return api_error(404, f"nothing at {request.path[:200]}", code="unknown_url")

    @app.errorhandler(405)
    async def _wrong_method(_: Exception) -> Response:
        return api_error(405, f"{request.method} is not allowed on {request.path[:200]}")
