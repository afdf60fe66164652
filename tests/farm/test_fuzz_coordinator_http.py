"""Property-based fuzzing of the coordinator's own HTTP APIs, run as a process
(`llama-farm coordinator`, SQLite): the admin API, the chat API the webapp calls and the
programmatic API, with generated methods, paths, ids, query strings, tokens and bodies.
Every answer is a clear one: never a 5xx other than 502/503 (the broker is unreachable
here, so provisioning and cancelling may say so), always a JSON error saying what is
wrong; the coordinator keeps serving and its /metrics still answers."""

import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm_protocol.chat import SESSION_HEADER
from llama_farm.ports import free_port
from tests.support.fuzzing import FUZZ, json_values, path_ids
from tests.support.processes import start_service, wait_http

JSON = json_values(allow_nan=False)

ADMIN = "admin-" + secrets.token_hex(8)
SERVICE = "service-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-coordinator")
    port = free_port()
    env = dict(
        os.environ,
        FARM_DATABASE_URL=f"sqlite:///{tmp / 'farm.sqlite3'}",
        FARM_HTTP_PORT=str(port),
        FARM_SERVICE_TOKEN=SERVICE,
        FARM_ADMIN_TOKEN=ADMIN,
        FARM_BROKER__URL=f"mqtt://127.0.0.1:{free_port()}",  # nobody there
    )
    log = tmp / "coordinator.log"
    process = start_service(["coordinator"], env, tmp, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/metrics", process, log, ready=lambda r: r.status_code == 200)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


ids = path_ids("w1", "farm-coordinator")

PATHS = [
    "/api/v1/admin/workers",
    "/api/v1/admin/workers/{a}",
    "/api/v1/admin/workers/{a}/rotate",
    "/api/v1/admin/workers/{a}/revoke",
    "/api/v1/admin/workers/{a}/drain",
    "/api/v1/admin/api-keys",
    "/api/v1/admin/api-keys/{a}/revoke",
    "/api/v1/admin/api-keys/{a}/usage?days={b}",
    "/api/v1/admin/workers/{a}/enrol",
    "/api/v1/admin/jobs",
    "/api/v1/admin/jobs?state={a}&limit={b}",
    "/api/v1/admin/jobs/{a}",
    "/api/v1/admin/jobs/{a}/cancel",
    "/api/v1/admin/stats",
    "/api/v1/chat/me",
    "/api/v1/chat/me/name",
    "/api/v1/chat/threads",
    "/api/v1/chat/threads/{a}",
    "/api/v1/chat/threads/{a}/messages",
    "/api/v1/chat/threads/{a}/messages?before={b}",
    "/api/v1/chat/threads/{a}/join",
    "/api/v1/chat/threads/{a}/rename",
    "/api/v1/chat/threads/{a}/messages/{b}/retry",
    "/api/v1/chat/threads/{a}/messages/{b}/edit",
    "/api/v1/chat/threads/{a}/branch",
    "/api/v1/programmatic/keys/check",
    "/api/v1/programmatic/models",
    "/api/v1/programmatic/completions",
    "/api/v1/programmatic/cancel",
    "/api/v1/programmatic/enrol",
    "/api/v1/{a}",
]

BODIES = [
    {"name": "laptop"},
    {"name": "bot", "max_concurrent": 2},
    {"text": "hi", "model": "llama3"},
    {"system_prompt": "be brief"},
    {"key": "lfa_x_y"},
    {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
    {"title": "renamed"},
    {"message_id": "0" * 32},
    {"token": "lfe_" + "x" * 32},
    {"api_key": "lfa_x_y", "job_id": "0" * 32},
    {"api_key": "lfa_x_y", "model": "llama3", "task": "embed", "inputs": ["a", "b"]},
    {
        "api_key": "lfa_x_y",
        "model": "llama3",
        "messages": [{"role": "tool", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "options": {"stop": ["x"]},
    },
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return None
    if choice == 1:
        return draw(st.binary(max_size=200))
    if choice == 2:
        return json.dumps(draw(JSON)).encode()
    body: dict[str, Any] = dict(draw(st.sampled_from(BODIES)))
    if choice == 4:
        body[draw(st.sampled_from(sorted(body)))] = draw(JSON)
    return json.dumps(body).encode()


def test_the_coordinators_apis_answer_clearly_whatever_they_get(coordinator: str) -> None:
    with httpx.Client(base_url=coordinator, timeout=30) as http:

        @FUZZ
        @given(
            method=st.sampled_from(["GET", "POST", "DELETE"]),
            template=st.sampled_from(PATHS),
            a=ids,
            b=ids,
            body=bodies(),
            token=st.sampled_from([ADMIN, SERVICE, "", "wrong"]),
            session=st.sampled_from(["s" * 40, "", "short"]),
        )
        def run(
            method: str,
            template: str,
            a: str,
            b: str,
            body: bytes | None,
            token: str,
            session: str,
        ) -> None:
            headers = {SESSION_HEADER: session}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            path = template.format(a=a, b=b)
            response = http.request(method, path, content=body, headers=headers)
            status = response.status_code
            assert status < 500 or status in (502, 503), f"{status} {path}: {response.text}"
            if status >= 400:
                error = response.json()["error"]
                assert isinstance(error, str)
                assert error

        run()
        assert http.get("/metrics").status_code == 200
        stats = http.get("/api/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN}"})
        assert stats.status_code == 200
