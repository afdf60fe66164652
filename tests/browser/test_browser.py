"""A real headless Chromium against `llama-farm dev` run as a process: the journeys of the
chat page (a streamed reply, stop, retry, regenerate, failure, a shared thread watched from a second
browser, a reload mid-stream, long threads, rate-limit messages, themes, a phone screen)
and the farm page."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.dev_farm import dev_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
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
    env = {
        "FARM_SIM_TOKENS_PER_S": "15",
        "FARM_SIM_REPLY_TOKENS": "40",
        "FARM_SIM_TTFT_MS": "100",
        "FARM_RATE_SEND_PER_MINUTE": "600",  # the long-thread journey sends 11 at once
    }
    with dev_process(tmp_path, env) as url:
        yield url


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
        assert page.locator(".msg.user .body").last.inner_text() == "Tell me about llamas"
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
        assert float(cells[4]) > 0  # tokens/s over the last minute
        assert farm.locator("#workers-online").inner_text() == "1"
        assert farm.locator("#replies-minute").inner_text() == "1"
        screenshot(farm, "llama-farm-farm.png")


LAST_REPLY = "[...document.querySelectorAll('.msg.assistant')].pop()"


def wait_reply(page: Any, condition: str, timeout: int = 20_000) -> None:
    """Wait until the last reply on ``page`` meets a JS condition on ``m``."""
    page.wait_for_function(
        f"() => {{ const m = {LAST_REPLY}; return !!m && ({condition}); }}", timeout=timeout
    )


def reply_text(page: Any) -> str:
    text: str = page.evaluate(f"() => {LAST_REPLY}.querySelector('.body').innerText")
    return text


def test_a_failed_reply_can_be_retried(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        # The simulator fails the first request with this message mid-stream, then answers.
        page.fill("#input", "[[sim:fault=error_mid_stream]] [[sim:faults=1]] tell me a story")
        page.click("#send")
        wait_reply(page, "m.dataset.state === 'failed'")
        reply = page.locator(".msg.assistant").last
        assert reply.locator(".state").inner_text().startswith("I have failed you: ")
        assert "stopped mid-stream" in reply.locator(".state").inner_text()
        assert reply.locator(".retry").is_visible()
        assert reply.locator(".stop").is_hidden()
        screenshot(page, "llama-farm-failed.png")

        reply.locator(".retry").click()
        wait_reply(page, "m.dataset.state === 'done'")
        assert len(reply_text(page)) > 20
        assert reply.locator(".state").inner_text() == ""
        # A good reply can be generated again, too (the last one: "Regenerate").
        assert reply.locator(".retry").inner_text() == "Regenerate"
        reply.locator(".retry").click()
        wait_reply(page, "m.dataset.state === 'generating'")
        assert reply.locator(".retry").is_hidden()
        wait_reply(page, "m.dataset.state === 'done'")
        assert len(reply_text(page)) > 20


def test_a_shared_thread_is_watched_and_joined_from_a_second_browser(dev_farm: str) -> None:
    with chromium() as browser:
        alice = chat_page(browser, dev_farm)
        alice.fill("#input", "[[sim:tokens=120]] [[sim:tps=30]] a story for everyone")
        alice.click("#send")
        wait_reply(alice, "m.dataset.state === 'generating'")
        assert alice.locator("#members").inner_text().startswith("1 member: ")
        assert alice.locator("#leave").is_visible()
        assert alice.locator("#join").is_hidden()
        alice.click("#share")
        link = alice.url
        alice.wait_for_function(
            f"() => document.getElementById('notice').innerText.includes({link!r})"
        )

        # Bob (another browser profile: another identity) opens the link mid-stream.
        bob = chat_page(browser, link)
        wait_reply(bob, "m.dataset.state === 'generating'")
        seen = [len(reply_text(bob))]
        while bob.evaluate(f"() => {LAST_REPLY}.dataset.state") == "generating":
            seen.append(len(reply_text(bob)))
            bob.wait_for_timeout(100)
        assert len(set(seen)) >= 3, f"Bob should watch the text grow: {seen}"
        wait_reply(alice, "m.dataset.state === 'done'")
        wait_reply(bob, "m.dataset.state === 'done'")
        assert reply_text(bob) == reply_text(alice)
        assert bob.locator(".msg.user").last.inner_text().endswith("a story for everyone")

        # Bob reads as a guest until he joins; Alice sees him arrive.
        assert bob.locator("#join").is_visible()
        assert bob.locator("#members").inner_text().startswith("1 member: ")
        bob.click("#join")
        alice.wait_for_function(
            "() => document.getElementById('members').innerText.startsWith('2 members: ')"
        )
        assert bob.locator("#leave").is_visible()
        # the thread is in his list now (the list reloads after the join)
        bob.wait_for_function("() => document.querySelectorAll('#threads a').length === 1")

        # Bob writes; Alice sees his message and watches the reply stream in.
        bob.fill("#input", "[[sim:tokens=60]] [[sim:tps=30]] and one for me")
        bob.click("#send")
        alice.wait_for_function(
            "() => [...document.querySelectorAll('.msg.user')].pop()"
            ".innerText.endsWith('and one for me')"
        )
        wait_reply(alice, "m.dataset.state === 'generating'")
        wait_reply(alice, "m.dataset.state === 'done'")
        wait_reply(bob, "m.dataset.state === 'done'")
        assert reply_text(alice) == reply_text(bob)
        screenshot(alice, "llama-farm-shared.png")


def test_a_reload_mid_stream_continues_with_no_gap_or_duplicate(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        page.fill("#input", "[[sim:tokens=150]] [[sim:tps=30]] a long answer please")
        page.click("#send")
        wait_reply(page, "m.dataset.state === 'generating' && m.innerText.length > 40")
        before = reply_text(page)
        page.reload()
        wait_reply(page, "m.dataset.state === 'generating'")
        after = reply_text(page)
        assert after.startswith(before[: len(before) - 20])  # the text so far came back
        wait_reply(page, "m.dataset.state === 'done'")
        streamed = reply_text(page)
        assert len(streamed) > len(after) > 0  # and it went on, live

        # What the reloaded page built from the snapshot and live chunks is exactly what
        # the server stored: a fresh page shows the same.
        fresh = browser.new_page()
        fresh.goto(page.url)
        wait_reply(fresh, "m.dataset.state === 'done'")
        assert reply_text(fresh) == streamed


def test_long_threads_page_and_scroll_stays_put(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        page.fill("#input", "[[sim:tokens=3]] question 0")
        page.click("#send")
        wait_reply(page, "m.dataset.state === 'done'")
        thread_id = page.url.rsplit("/", 1)[1]
        api = f"{dev_farm}api/threads/{thread_id}"
        for i in range(1, 11):  # same browser profile: same identity
            sent = page.request.post(
                api + "/messages", data={"text": f"[[sim:tokens=3]] question {i}"}
            )
            assert sent.status == 201, sent.text()
            reply_id = sent.json()["reply"]["message_id"]
            wait_reply(page, f"m.dataset.id === '{reply_id}' && m.dataset.state === 'done'")

        page.reload()
        page.locator(".msg").nth(19).wait_for()
        assert page.locator(".msg").count() == 20
        assert page.locator("#load-older").is_visible()
        page.click("#load-older")
        page.wait_for_function("() => document.querySelectorAll('.msg').length === 22")
        assert page.locator("#load-older").is_hidden()
        users = page.locator(".msg.user .body").all_inner_texts()
        assert [u.rsplit(" ", 1)[1] for u in users] == [str(i) for i in range(11)]

        # Scrolled up to read: a new reply does not pull the page down; a button offers to.
        page.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
        sent = page.request.post(api + "/messages", data={"text": "[[sim:tokens=80]] more"})
        assert sent.status == 201
        page.locator("#new-messages").wait_for(state="visible")
        assert page.evaluate("() => document.getElementById('messages').scrollTop") == 0
        page.click("#new-messages")
        assert page.locator("#new-messages").is_hidden()
        at_bottom = (
            "() => { const b = document.getElementById('messages');"
            " return b.scrollHeight - b.scrollTop - b.clientHeight < 80; }"
        )
        assert page.evaluate(at_bottom)
        # At the bottom, the page follows the stream by itself.
        wait_reply(page, "m.dataset.state === 'done'")
        assert page.evaluate(at_bottom)
        assert page.locator("#new-messages").is_hidden()


def test_rate_limit_messages_themes_and_a_phone_screen(dev_farm: str) -> None:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
        page = context.new_page()
        page.goto(dev_farm)
        page.wait_for_selector("#sim-banner:not([hidden])")

        # A phone: the chat fills the screen, nothing scrolls sideways, chats are a tap away.
        assert page.locator("#sidebar").is_hidden()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        box = page.locator("#send").bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= 390
        assert box["y"] + box["height"] <= 844
        page.fill("#input", "hello from a phone")
        page.click("#send")
        wait_reply(page, "m.dataset.state === 'done'")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        page.click("#toggle-sidebar")
        assert page.locator("#sidebar").is_visible()

        # A new name: once a second, and the page says when to try again.
        name = page.locator("#identity").inner_text()
        page.click("#reroll")
        page.wait_for_function(f"() => document.getElementById('identity').innerText !== {name!r}")
        page.click("#reroll")
        page.wait_for_function(
            "() => document.getElementById('notice').innerText"
            " === 'Slow down! You can pick another name in 1 s.'"
        )

        # Themes: light, dark, remembered across a reload.
        background = "() => getComputedStyle(document.body).backgroundColor"
        assert page.locator("#theme").inner_text() == "Theme: auto"
        page.click("#theme")
        assert page.locator("#theme").inner_text() == "Theme: light"
        assert page.evaluate(background) == "rgb(250, 250, 247)"
        page.click("#theme")
        assert page.locator("#theme").inner_text() == "Theme: dark"
        assert page.evaluate(background) == "rgb(27, 27, 26)"
        page.reload()
        page.wait_for_selector("#sim-banner:not([hidden])")
        assert page.evaluate(background) == "rgb(27, 27, 26)"
        screenshot(page, "llama-farm-phone-dark.png")
