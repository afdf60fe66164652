"""The chat page while a long reply streams, in Debian's Chromium against `llama-farm dev`:
a 20 KB markdown reply (prose, lists, a table and code blocks) echoed by the simulator at
400 tokens/s, watched with a PerformanceObserver for long tasks (over 50 ms: the page
does not answer a key press meanwhile); and, side by side, how long one rendering of the
final text takes (markdown-it and highlight.js) at 2 KB and at 20 KB."""

import shutil
import tempfile
import time
from pathlib import Path

from tests.support.dev_farm import dev_process

CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

SECTION = """## Part {i}

Some prose about **llamas** and `alpacas`, with a [link](https://ollama.com).

1. first point
   - a nested one
2. second point

| name | legs |
|------|-----:|
| llama | 4 |

```python
def part_{i}(herd):
    return [llama for llama in herd if llama.legs == 4]  # comment {i}
```
"""


def _document(size: int) -> str:
    text, i = "", 0
    while len(text) < size:
        text += SECTION.format(i=i)
        i += 1
    return text


WATCH = """() => {
  window.__long = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__long.push(entry.duration);
  }).observe({ type: "longtask", buffered: false });
}"""

RENDER = """(text) => {
  const times = [];
  for (let i = 0; i < 9; i++) {
    const start = performance.now();
    window.renderMarkdown(text);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[4];
}"""


def main() -> str:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "Debian's chromium is not installed: nothing measured."
    document = _document(20_000)
    tmp = Path(tempfile.mkdtemp(prefix="farm-page-"))
    with dev_process(tmp, {"FARM_SIM_TTFT_MS": "20"}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROME_ARGS, headless=True)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#sim-banner:not([hidden])")
        page.evaluate(WATCH)
        started = time.monotonic()
        page.fill("#input", "[[sim:echo]] [[sim:tps=400]] " + document)
        page.click("#send")
        page.wait_for_function(
            "() => { const m = [...document.querySelectorAll('.msg.assistant')].pop();"
            " return m && m.dataset.state === 'done'; }",
            timeout=120_000,
        )
        streamed_s = time.monotonic() - started
        long_tasks = page.evaluate("() => window.__long")
        blocks = page.evaluate("() => document.querySelectorAll('.msg.assistant .code').length")
        small = page.evaluate(RENDER, document[:2_000])
        large = page.evaluate(RENDER, document)
        browser.close()
    worst = max(long_tasks, default=0.0)
    print(
        f"page: 20 KB reply streamed in {streamed_s:.1f} s; {len(long_tasks)} long tasks"
        f" (worst {worst:.0f} ms); one render: 2 KB {small:.2f} ms, 20 KB {large:.2f} ms"
    )
    return "\n".join(
        [
            "| what | figure |",
            "|---|---|",
            f"| a {len(document):,}-character markdown reply ({blocks} code blocks) streamed"
            f" at 400 tokens/s | {streamed_s:.1f} s |",
            f"| long tasks (> 50 ms) while it streamed | {len(long_tasks)}"
            f" (worst {worst:.0f} ms) |",
            f"| one rendering of 2 KB of it (median of 9) | {small:.2f} ms |",
            f"| one rendering of all 20 KB (median of 9) | {large:.2f} ms"
            f" ({large / small if small else 0:.1f}x the 2 KB's) |",
        ]
    )
