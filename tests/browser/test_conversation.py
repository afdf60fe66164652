"""Conversation controls in Debian's Chromium against `llama-farm dev`, driven from the
keyboard: a message sent while the reply before it generates waits its turn and is
answered after it; a message edited branches the chat, the page shows the new branch and
offers its versions, and switching back shows the first branch whole; axe-core finds
nothing serious in the editor and the version switch."""

from typing import Any

from tests.browser.test_browser import chromium, dev_farm, screenshot, wait_reply
from tests.browser.test_rendering import serious_violations

__all__ = ["dev_farm"]  # the fixture, shared with test_browser

TEXTS = (
    "() => [...document.querySelectorAll('.msg')].map((m) => m.querySelector('.body').innerText)"
)


def _send(page: Any, text: str) -> None:
    page.focus("#input")
    page.keyboard.insert_text(text)
    page.keyboard.press("Enter")


def _replies(page: Any, count: int, condition: str = "m.dataset.state === 'done'") -> None:
    page.wait_for_function(
        "() => { const r = [...document.querySelectorAll('.msg.assistant')];"
        f" return r.length === {count} && r.every((m) => {condition}); }}",
        timeout=20_000,
    )


def test_send_while_generating_edit_and_switch_branches(dev_farm: str) -> None:
    with chromium() as browser:
        page = browser.new_context(bypass_csp=True).new_page()  # bypass: to inject axe
        page.goto(dev_farm)
        page.wait_for_selector("#sim-banner:not([hidden])")
        _send(page, "[[sim:tokens=60]] [[sim:tps=20]] a long one")
        wait_reply(page, "m.dataset.state === 'generating'")
        # Sent while the reply generates: stored, and its reply waits its turn.
        _send(page, "[[sim:tokens=3]] and then this")
        page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 2")
        states = page.evaluate(
            "() => [...document.querySelectorAll('.msg.assistant')].map((m) => m.dataset.state)"
        )
        assert states == ["generating", "queued"]
        assert page.text_content("#notice") == ""
        screenshot(page, "llama-farm-send-while-generating.png")
        _replies(page, 2)

        # Edit the first message from the keyboard: Edit, the text, Enter.
        first = page.locator(".msg.user").first
        first.locator(".edit").focus()
        page.keyboard.press("Enter")
        editor = first.locator(".editor textarea")
        assert editor.evaluate("(e) => e === document.activeElement")
        assert editor.input_value() == "[[sim:tokens=60]] [[sim:tps=20]] a long one"
        editor.fill("[[sim:tokens=3]] something else")
        screenshot(page, "llama-farm-editing.png")
        page.keyboard.press("Enter")
        _replies(page, 1)
        texts = page.evaluate(TEXTS)
        assert texts[0] == "[[sim:tokens=3]] something else"
        assert len(texts) == 2
        versions = page.locator(".msg.user").first.locator(".versions")
        assert versions.is_visible()
        assert versions.locator(".which [aria-hidden]").inner_text() == "2 / 2"
        assert versions.locator(".which .visually-hidden").inner_text() == "Version 2 of 2"
        assert versions.locator(".next").is_disabled()
        screenshot(page, "llama-farm-edited.png")

        # Back to the first version: the first branch, whole, and the focus stays on
        # the version switch.
        versions.locator(".prev").focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelectorAll('.msg').length === 4"
            " && document.querySelector('.msg.user .which').textContent.startsWith('1 / 2')"
        )
        texts = page.evaluate(TEXTS)
        assert texts[0] == "[[sim:tokens=60]] [[sim:tps=20]] a long one"
        assert texts[2] == "[[sim:tokens=3]] and then this"
        assert page.evaluate("() => document.activeElement.classList.contains('next')")
        # Replies offer no Edit; the controls pass axe-core.
        assert page.locator(".msg.assistant .edit:visible").count() == 0
        first.locator(".edit").click()
        assert serious_violations(page) == []
