"""The webapp killed (kill -9) and started again while two Chromium pages watch a reply
stream: both pages reconnect by themselves, carry on live, and end with exactly the text
the coordinator stored (a fresh page shows the same). Nothing is lost: the coordinator,
not the webapp, is the system of record."""

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llama_farm.ollama_sim.settings import SimSettings
from tests.browser.test_browser import CHROME_ARGS, CHROMIUM, LAST_REPLY
from tests.support.brokers import broker_of
from tests.support.farm import Farm, running_farm, webapp_process

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def start_webapp(farm: Farm, log: Path) -> subprocess.Popen[bytes]:
    return webapp_process(farm, log)


async def reply_state(page: Any) -> str:
    state: str = await page.evaluate(f"() => {LAST_REPLY}.dataset.state")
    return state


async def reply_text(page: Any) -> str:
    text: str = await page.evaluate(f"() => {LAST_REPLY}.querySelector('.body').innerText")
    return text


async def test_browsers_ride_through_a_webapp_restart(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    sim = SimSettings(ttft_ms=50, tokens_per_s=25, reply_tokens=40)
    async with (
        broker_of("mosquitto") as broker,
        running_farm(tmp_path, broker, sim=sim, webapp=False) as farm,
        async_playwright() as p,
    ):
        log = tmp_path / "webapp.log"
        webapp = start_webapp(farm, log)
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        try:
            alice = await browser.new_page()
            await alice.goto(farm.web_url)
            await alice.wait_for_selector("#sim-banner:not([hidden])")
            await alice.fill("#input", "[[sim:tokens=180]] a story through a restart")
            await alice.click("#send")
            await alice.wait_for_function(
                f"() => {{ const m = {LAST_REPLY}; return m && m.dataset.state === 'generating'"
                " && m.querySelector('.body').innerText.length > 20; }"
            )
            bob = await browser.new_page()
            await bob.goto(alice.url)
            await bob.wait_for_function(f"() => {LAST_REPLY}?.dataset.state === 'generating'")

            webapp.kill()
            webapp.wait()
            before = len(await reply_text(alice))
            await asyncio.sleep(1.0)  # the reply goes on while nobody relays it
            webapp = start_webapp(farm, log)

            for page in (alice, bob):
                # back live: the text grows again before the reply ends
                await page.wait_for_function(
                    f"() => {LAST_REPLY}.querySelector('.body').innerText.length > {before + 40}",
                    timeout=20_000,
                )
            assert await reply_state(alice) == "generating"
            for page in (alice, bob):
                await page.wait_for_function(
                    f"() => {LAST_REPLY}.dataset.state === 'done'", timeout=30_000
                )
            fresh = await browser.new_page()
            await fresh.goto(alice.url)
            await fresh.wait_for_function(f"() => {LAST_REPLY}?.dataset.state === 'done'")
            stored = await reply_text(fresh)
            assert len(stored.split()) == 180
            assert await reply_text(alice) == stored
            assert await reply_text(bob) == stored
        finally:
            await browser.close()
            webapp.terminate()
            webapp.wait(timeout=10)
        assert "Traceback" not in log.read_text()
