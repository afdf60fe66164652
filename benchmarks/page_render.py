"""The chat page while a long reply streams, in Debian's Chromium against `llama-farm dev`:
a 20 KB markdown reply (prose, lists, a table and code blocks) echoed by the simulator at
400 tokens/s, with Chromium's trace of the page's main thread: its long tasks (over 50 ms:
the page does not answer a key press meanwhile), by the clock and by the main thread's
own CPU time in them (on 2 cores shared with the farm, a task also lasts while the thread
waits for a core: the CPU time is the page's own work). The design before (each change
rendered the whole text again) and the one now (only the last block), side by side in
one run; and how long one rendering of the whole text takes at 2 KB and at 20 KB. The dev
farm (coordinator, webapp, broker, worker, simulator) runs on the last core."""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# The design before: each change of a streaming reply rendered its whole text again.
WHOLE_EACH_TIME = """() => {
  MarkdownStream.prototype.grow = function (text) {
    this.tailHtml = renderMarkdown(text);
    this.body.innerHTML = this.tailHtml;
    this.text = text;
    return true;
  };
}"""

WAIT_DONE = (
    "(n) => { const r = [...document.querySelectorAll('.msg.assistant')];"
    " return r.length === n && r[n - 1].dataset.state === 'done'; }"
)


@dataclass
class Tasks:
    seconds: float  # the reply's stream, sent to done
    wall_ms: list[float]  # the main thread's tasks over 50 ms, by the clock
    cpu_ms: list[float]  # the main thread's CPU time in each of those


def _stream(browser: Any, page: Any, document: str) -> Tasks:
    """Stream ``document`` as the page's first reply, with the page traced."""
    page.fill("#input", "[[sim:echo]] [[sim:tps=400]] " + document)
    trace = Path(tempfile.mkdtemp(prefix="farm-trace-")) / "trace.json"
    browser.start_tracing(
        page=page,
        path=str(trace),
        categories=["devtools.timeline", "disabled-by-default-devtools.timeline"],
    )
    started = time.monotonic()
    page.click("#send")
    page.wait_for_function(WAIT_DONE, arg=1, timeout=120_000)
    seconds = time.monotonic() - started
    browser.stop_tracing()
    events = json.loads(trace.read_text())
    shutil.rmtree(trace.parent)
    events = events["traceEvents"] if isinstance(events, dict) else events
    main = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
    }
    long = [
        e
        for e in events
        if (e.get("pid"), e.get("tid")) in main
        and e.get("name") == "RunTask"
        and e.get("dur", 0) > 50_000
    ]
    return Tasks(seconds, [e["dur"] / 1e3 for e in long], [e.get("tdur", 0) / 1e3 for e in long])


def main() -> str:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "Debian's chromium is not installed: nothing measured."
    document = _document(20_000)
    tmp = Path(tempfile.mkdtemp(prefix="farm-page-"))
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})  # the dev farm inherits this
    runs: dict[str, Tasks] = {}
    env = {"FARM_SIM_TTFT_MS": "20", "FARM_RATE_SEND_PER_MINUTE": "600"}
    with dev_process(tmp, env) as url, sync_playwright() as p:
        os.sched_setaffinity(0, set(cores))  # Playwright and Chromium: every core
        browser = p.chromium.launch(executable_path=chromium, args=CHROME_ARGS, headless=True)
        for design in ("whole text each change (before)", "last block only (now)"):
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#sim-banner:not([hidden])")
            if "before" in design:
                page.evaluate(WHOLE_EACH_TIME)
            runs[design] = _stream(browser, page, document)
            blocks = page.evaluate("() => document.querySelectorAll('.msg.assistant .code').length")
            page.close()
        page = browser.new_page()
        page.goto(url)
        page.evaluate(RENDER, document)  # warm
        small = page.evaluate(RENDER, document[:2_000])
        large = page.evaluate(RENDER, document)
        browser.close()
    os.sched_setaffinity(0, set(cores))
    lines = [
        f"a {len(document):,}-character markdown reply ({blocks} code blocks) streamed at"
        " 400 tokens/s; the page's main thread, from Chromium's trace:",
        "",
        "| rendering while it streams | streamed in | tasks over 50 ms | the longest |"
        " their CPU time, most | tasks with over 50 ms of CPU |",
        "|---|---|---|---|---|---|",
    ]
    for design, run in runs.items():
        worst, cpu = max(run.wall_ms, default=0.0), max(run.cpu_ms, default=0.0)
        busy = sum(c > 50 for c in run.cpu_ms)
        print(
            f"page, {design}: {run.seconds:.1f} s, {len(run.wall_ms)} tasks over 50 ms"
            f" (longest {worst:.0f} ms, most CPU {cpu:.0f} ms), {busy} with over 50 ms of CPU"
        )
        lines.append(
            f"| {design} | {run.seconds:.1f} s | {len(run.wall_ms)} | {worst:.0f} ms |"
            f" {cpu:.0f} ms | {busy} |"
        )
    print(f"page: one render of 2 KB {small:.2f} ms, of 20 KB {large:.2f} ms")
    lines += [
        "",
        f"One rendering of the whole text (median of 9): {small:.2f} ms at 2 KB, {large:.2f} ms"
        f" at 20 KB ({large / small if small else 0:.1f}x).",
    ]
    return "\n".join(lines)
