"""A real headless Chromium against `llama-farm dev` run as a process: type a message and
watch the reply's text grow before it completes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llama_farm.ports import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
CHROME_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def dev_farm(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ, FARM_SIM_TOKENS_PER_S="15", FARM_SIM_REPLY_TOKENS="40", FARM_SIM_TTFT_MS="100"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_farm.cli",
            "dev",
            "--port",
            str(port),
            "--llm",
            "sim",
            "--data-dir",
            str(tmp_path / "farm"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "api/models", timeout=1).json().get("workers_online") == 1:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "llama-farm dev did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=20)[0]
        assert process.returncode == 0, output
        assert "Traceback" not in output, output
        # the worker starts once the in-process simulator listens: no false alarm at start
        assert "worker unavailable" not in output, output
        assert "Chat:" in output
        assert url in output


def test_typed_message_streams_into_the_page(dev_farm: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(dev_farm)
            page.wait_for_selector("#sim-banner:not([hidden])")
            page.fill("#input", "Tell me about llamas")
            page.click("#send")
            reply = page.locator(".msg.assistant").last
            lengths: list[int] = []
            while True:
                state = reply.get_attribute("data-state")
                lengths.append(len(reply.locator(".body").inner_text()))
                if state == "done":
                    break
                assert state in ("queued", "generating"), state
                page.wait_for_timeout(100)
            growing = [n for n in lengths[:-1] if 0 < n < lengths[-1]]
            assert len(set(growing)) >= 2, f"text should grow while streaming: {lengths}"
            assert page.locator(".msg.user").last.inner_text().endswith("Tell me about llamas")
            assert "/t/" in page.url
            page.screenshot(
                path=str(
                    Path(os.environ.get("FARM_SCREENSHOT_DIR", "/tmp")) / "llama-farm-chat.png"
                )
            )
        finally:
            browser.close()
