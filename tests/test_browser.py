"""A real headless Chromium against `llama-farm dev` run as a process: type a message and
watch the reply's text grow before it completes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def chat_page(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#sim-banner:not([hidden])")
    return page


def screenshot(page: Any, name: str) -> None:
    folder = Path(os.environ.get("FARM_SCREENSHOT_DIR", "/tmp"))
    page.screenshot(path=str(folder / name))


def test_typed_message_streams_into_the_page(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
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
        screenshot(page, "llama-farm-chat.png")


def test_stop_retry_and_html_that_never_runs(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)

        # HTML and script in a message are shown as text, never run.
        attack = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
        page.fill("#input", attack)
        page.click("#send")
        mine = page.locator(".msg.user").last
        mine.wait_for()
        page.locator(".msg.assistant").last.locator(".stop").wait_for()
        assert page.evaluate("window.__xss") is None
        assert mine.locator("img, script").count() == 0
        assert "onerror" in mine.inner_text()
        page.wait_for_selector('.msg.assistant[data-state="done"]', timeout=20_000)

        # A long reply: stop it while it streams; its text stays, and Retry appears.
        page.fill("#input", "[[sim:tokens=600]] a very long story")
        page.click("#send")
        reply = page.locator(".msg.assistant").last
        page.wait_for_function(
            "() => { const m = [...document.querySelectorAll('.msg.assistant')].pop();"
            " return m && m.dataset.state === 'generating'"
            " && m.querySelector('.body').innerText.length > 20; }",
            timeout=20_000,
        )
        reply.locator(".stop").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.msg.assistant')].pop()"
            ".dataset.state === 'cancelled'",
            timeout=10_000,
        )
        kept = reply.locator(".body").inner_text()
        assert len(kept) > 20
        assert reply.locator(".stop").is_hidden()
        assert "stopped" in reply.locator(".state").inner_text()
        screenshot(page, "llama-farm-stopped.png")

        # Retry generates it again, live, from an empty text.
        reply.locator(".retry").click()
        page.wait_for_function(
            "() => { const m = [...document.querySelectorAll('.msg.assistant')].pop();"
            " return m.dataset.state === 'generating'"
            " && m.querySelector('.body').innerText.length > 0; }",
            timeout=20_000,
        )
        assert reply.locator(".retry").is_hidden()
        reply.locator(".stop").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.msg.assistant')].pop()"
            ".dataset.state === 'cancelled'",
            timeout=10_000,
        )


def test_the_farm_page_shows_the_workers_and_their_work(dev_farm: str) -> None:
    with chromium() as browser:
        chat = chat_page(browser, dev_farm)
        chat.fill("#input", "hello")
        chat.click("#send")
        chat.wait_for_selector('.msg.assistant[data-state="done"]', timeout=20_000)

        farm = browser.new_page()
        farm.goto(dev_farm + "farm")
        row = farm.locator("#workers tbody tr").first
        row.wait_for()
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "dev worker (simulated)"
        assert "llama3" in cells[1]
        assert cells[2] == "idle"
        assert cells[3] == "1"  # the reply just served
        assert float(cells[4]) > 0  # characters/s over the last minute
        assert farm.locator("#workers-online").inner_text() == "1"
        assert farm.locator("#replies-minute").inner_text() == "1"
        screenshot(farm, "llama-farm-farm.png")
