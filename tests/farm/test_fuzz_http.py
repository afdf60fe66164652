"""Property-based fuzzing of every HTTP endpoint of `llama-farm dev` run as a process (the
chat API behind the webapp, the OpenAI-compatible API, pages and static files): generated
methods, paths, ids, headers and bodies (random bytes, invalid UTF-8, random JSON, valid
bodies with a field broken). Every answer is a clear one: never a 5xx other than a 503
"busy", and an API error is JSON saying what is wrong. Then the named cases: a 1 MB
prompt, invalid UTF-8, and a user opening thousands of chats, each refused cleanly; the
farm still answers afterwards."""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.dev_farm import dev_process
from tests.support.fuzzing import FUZZ, json_values, path_ids

JSON = json_values(allow_nan=False)


class Farm:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key
        self.http = httpx.Client(base_url=url, timeout=30)
        me = self.http.get("/api/me")
        assert me.status_code == 200
        thread = self.http.post("/api/threads", json={"system_prompt": ""})
        assert thread.status_code == 201
        self.thread_id = thread.json()["thread_id"]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp("fuzz-http")
    env = {"FARM_SIM_TOKENS_PER_S": "0", "FARM_SIM_TTFT_MS": "1", "FARM_SIM_REPLY_TOKENS": "5"}
    with dev_process(tmp, env) as url:
        made = subprocess.run(
            [sys.executable, "-m", "llama_farm.cli", "api-keys", "add", "--name", "fuzz"],
            env={"FARM_DATABASE_URL": f"sqlite:///{tmp / 'farm' / 'dev.sqlite3'}", "PATH": ""},
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        found = re.search(r"api key:\s+(\S+)", made.stdout)
        assert found, made.stdout
        farm = Farm(url.rstrip("/"), found.group(1))
        try:
            yield farm
        finally:
            farm.http.close()


def paths(thread_id: str) -> st.SearchStrategy[str]:
    ids = path_ids(thread_id)
    templates = [
        "/api/me",
        "/api/me/name",
        "/api/models",
        "/api/farm",
        "/api/threads",
        "/api/threads/{a}",
        "/api/threads/{a}/messages",
        "/api/threads/{a}/messages?before={b}",
        "/api/threads/{a}/join",
        "/api/threads/{a}/leave",
        "/api/threads/{a}/{b}",
        "/api/threads/{a}/messages/{b}/stop",
        "/api/threads/{a}/messages/{b}/retry",
        "/api/threads/{a}/messages/{b}/edit",
        "/api/threads/{a}/branch",
        "/api/threads/{a}/messages/{b}/{b}",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/{a}",
        "/t/{a}",
        "/static/{a}",
        "/farm",
        "/healthz",
        "/",
    ]
    return st.builds(
        lambda template, a, b: template.format(a=a, b=b),
        st.sampled_from(templates),
        ids,
        ids,
    )


def bodies() -> st.SearchStrategy[bytes | None]:
    completion: dict[str, Any] = {
        "model": "llama3",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "max_tokens": 5,
    }
    message: dict[str, Any] = {"text": "hi", "model": "llama3"}
    valid: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
        [completion, message, {"system_prompt": "be brief"}, {"message_id": "0" * 32}]
    )

    @st.composite
    def broken(draw: st.DrawFn) -> bytes:
        body = dict(draw(valid))
        key = draw(st.sampled_from(sorted(body)))
        if draw(st.booleans()):
            body[key] = draw(JSON)
        else:
            del body[key]
        return json.dumps(body).encode()

    return st.one_of(
        st.none(),
        st.binary(max_size=200),
        st.just(b'{"text": "\xff\xfe\xfa"}'),
        JSON.map(lambda v: json.dumps(v).encode()),
        valid.map(lambda v: json.dumps(v).encode()),
        broken(),
    )


def check_clear(response: httpx.Response) -> None:
    path = response.request.url.path  # as sent (the client normalises "..")
    status = response.status_code
    assert status < 500 or status == 503, f"{status} on {path}: {response.text[:300]}"
    api = path.startswith(("/api/", "/v1/"))
    if api and status >= 400:
        body: Any = response.json()
        error = body["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert isinstance(message, str)
        assert message


def test_every_endpoint_answers_clearly_whatever_it_gets(farm: Farm) -> None:
    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
        path=paths(farm.thread_id),
        body=bodies(),
        auth=st.sampled_from(["key", "none", "garbage"]),
    )
    def run(method: str, path: str, body: bytes | None, auth: str) -> None:
        headers = {"Content-Type": "application/json"}
        if auth == "key":
            headers["Authorization"] = f"Bearer {farm.api_key}"
        elif auth == "garbage":
            headers["Authorization"] = "Bearer lfa_nope_nope"
        response = farm.http.request(method, path, content=body, headers=headers)
        check_clear(response)

    run()
    # Still serving: a real message gets a real reply.
    assert farm.http.get("/healthz").status_code == 200
    with httpx.Client(base_url=farm.url, timeout=30) as fresh:
        still_serving(fresh)


def still_serving(fresh: httpx.Client) -> None:
    thread = fresh.post("/api/threads", json={"system_prompt": ""}).json()["thread_id"]
    sent = fresh.post(f"/api/threads/{thread}/messages", json={"text": "still there?"})
    assert sent.status_code == 201, sent.text
    reply_id = sent.json()["reply"]["message_id"]
    deadline = time.monotonic() + 20
    while True:
        snapshot = fresh.get(f"/api/threads/{thread}").json()
        reply = next(m for m in snapshot["messages"] if m["message_id"] == reply_id)
        if reply["state"] == "done":
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)


def test_a_1_mb_prompt_and_invalid_utf8_are_refused_cleanly(farm: Farm) -> None:
    prompt = "llama " * 180_000  # over 1 MB
    sent = farm.http.post(f"/api/threads/{farm.thread_id}/messages", json={"text": prompt})
    assert sent.status_code == 413
    assert "larger than" in sent.json()["error"]
    assert sent.headers["connection"] == "close"  # the unread body ends the connection
    openai = farm.http.post(
        "/v1/chat/completions",
        json={"model": "llama3", "messages": [{"role": "user", "content": prompt}]},
        headers={"Authorization": f"Bearer {farm.api_key}"},
    )
    assert openai.status_code == 413
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert openai.headers["connection"] == "close"
    # Under the byte limit but over the prompt limit (100,000 characters): 400.
    long = farm.http.post(f"/api/threads/{farm.thread_id}/messages", json={"text": "x" * 150_000})
    assert long.status_code == 400
    assert "text" in long.json()["error"]

    for body in (b'{"text": "\xff\xfe"}', b"\xc3\x28", b'{"text": "ok\xed\xa0\x80"}'):
        bad = farm.http.post(
            f"/api/threads/{farm.thread_id}/messages",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]
        bad_api = farm.http.post(
            "/v1/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {farm.api_key}"},
        )
        assert bad_api.status_code == 400, bad_api.text
        assert bad_api.json()["error"]["message"]


def test_a_user_opening_thousands_of_chats_is_refused_cleanly(farm: Farm) -> None:
    with httpx.Client(base_url=farm.url, timeout=30) as user:
        thousands_of_chats(farm, user)


def thousands_of_chats(farm: Farm, user: httpx.Client) -> None:
    statuses: dict[int, int] = {}
    for _ in range(2000):
        response = user.post("/api/threads", json={"system_prompt": ""})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 429:
            assert response.json()["error"].startswith("you can start another chat in")
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses == {201: 2, 429: 1998}
    assert len(user.get("/api/threads").json()) == 2
    # Everyone else is unaffected.
    assert farm.http.post("/api/threads", json={"system_prompt": ""}).status_code in (201, 429)
    # (its chat may be gone: the fuzzing of every endpoint may have deleted it, as its owner)
    assert farm.http.get("/api/threads").status_code == 200
