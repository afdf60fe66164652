"""What a reply looks like and who can read it, in Debian's Chromium against `llama-farm
dev`: markdown rendered by markdown-it (tables, nested lists, fenced code highlighted with
its language) compared with the expected DOM, and rendered while it streams (only the last
block again) to exactly what the whole text renders to; a code block copied with its button; raw
HTML and javascript: links kept inert; who served a reply, its tokens, speed and time; the
reply announced once, when complete; reduced
motion respected; and axe-core (vendored as a test asset) finding no serious or critical
violation, in both themes and at a phone's size."""

import json
from pathlib import Path
from typing import Any

from tests.browser.test_browser import chat_page, chromium, dev_farm, wait_reply

__all__ = ["dev_farm"]  # the fixture, shared with test_browser

AXE = Path(__file__).parent / "assets" / "axe.min.js"

FIXTURE = """Steps:
1. first
   - nested a
   - nested b
2. second

| name | legs |
|------|-----:|
| llama | 4 |

> quoted **bold** and `code *not em*`

```python
def greet(name):
    return f"hi {name}"  # a comment
```

See <https://ollama.com> and [evil](javascript:alert(1)) and <b>raw</b>."""


def _ask(page: Any, text: str, until: str = "m.dataset.state === 'done'") -> None:
    """Send ``text``; return once the reply meets ``until`` (a JS condition on ``m``)."""
    page.fill("#input", text)
    page.click("#send")
    wait_reply(page, until)


def _echo(page: Any, text: str) -> None:
    _ask(page, "[[sim:echo]] [[sim:tps=0]] " + text)


def _last_body(page: Any, selector: str) -> Any:
    return page.evaluate(
        "(s) => { const m = [...document.querySelectorAll('.msg.assistant')].pop();"
        " return [...m.querySelectorAll('.body ' + s)].map((e) => e.outerHTML); }",
        selector,
    )


def test_markdown_and_code_render_as_expected(dev_farm: str) -> None:
    with chromium() as browser:
        context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
        page = context.new_page()
        page.goto(dev_farm)
        page.wait_for_selector("#sim-banner:not([hidden])")
        _echo(page, FIXTURE)
        shape = page.evaluate(
            """() => {
              const m = [...document.querySelectorAll('.msg.assistant')].pop();
              const b = m.querySelector('.body');
              const ol = b.querySelector('ol');
              return {
                p: b.querySelector('p').textContent,
                items: [...ol.children].map((li) => li.firstChild.textContent.trim()),
                nested: [...ol.querySelectorAll(':scope > li > ul > li')]
                  .map((li) => li.textContent),
                head: [...b.querySelectorAll('table th')].map((th) => th.textContent),
                cell: [...b.querySelectorAll('table td')].map((td) => td.textContent),
                align: getComputedStyle(b.querySelector('table td:last-child')).textAlign,
                quote: b.querySelector('blockquote strong').textContent,
                inlineCode: b.querySelector('blockquote code').textContent,
                emInCode: b.querySelectorAll('blockquote code em').length,
                lang: b.querySelector('.code .lang').textContent,
                codeClass: b.querySelector('.code code').className,
                keywords: [...b.querySelectorAll('.code .hljs-keyword')].map((k) => k.textContent),
                comment: b.querySelector('.code .hljs-comment').textContent,
                links: [...b.querySelectorAll('a')]
                  .map((a) => [a.getAttribute('href'), a.rel, a.target]),
                raw: b.querySelectorAll('b').length,
                text: b.innerText,
              };
            }"""
        )
        assert shape["p"] == "Steps:"
        assert shape["items"] == ["first", "second"]
        assert shape["nested"] == ["nested a", "nested b"]
        assert shape["head"] == ["name", "legs"]
        assert shape["cell"] == ["llama", "4"]
        assert shape["align"] == "right"
        assert shape["quote"] == "bold"
        assert (shape["inlineCode"], shape["emInCode"]) == ("code *not em*", 0)
        assert (shape["lang"], shape["codeClass"]) == ("python", "hljs language-python")
        assert "def" in shape["keywords"]
        assert "return" in shape["keywords"]
        assert shape["comment"] == "# a comment"
        # a link only to http(s); never javascript:; raw HTML stays text
        assert shape["links"] == [["https://ollama.com", "noopener noreferrer nofollow", "_blank"]]
        assert shape["raw"] == 0
        assert "<b>raw</b>" in shape["text"]
        assert "[evil](javascript:alert(1))" in shape["text"]

        # Streaming renders only the last block again, and ends with what the whole
        # text renders to, at every point of the stream.
        mismatches = page.evaluate(
            """(text) => {
              const body = document.createElement('div');
              const stream = new MarkdownStream(body);
              const whole = document.createElement('div');
              const wrong = [];
              let first = null;  // a finished block's node stays the same node
              for (let end = 1; end <= text.length; end += 7) {
                const prefix = text.slice(0, end);
                if (!stream.grow(prefix)) return ['did not grow at ' + end];
                if (first === null && body.children.length > 2) first = body.firstElementChild;
                if (first !== null && body.firstElementChild !== first) wrong.push('node ' + end);
                whole.innerHTML = renderMarkdown(prefix);
                if (stream.html() !== renderMarkdown(prefix)) wrong.push(end);
                else if (body.innerHTML !== whole.innerHTML) wrong.push('dom ' + end);
              }
              return wrong;
            }""",
            FIXTURE * 3,
        )
        assert mismatches == []

        # Copy code: the button puts exactly the code on the clipboard.
        page.click(".msg.assistant:last-of-type .code .copy")
        page.wait_for_function(
            "() => document.querySelector('.msg.assistant:last-of-type .copy')"
            ".textContent === 'Copied'"
        )
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert copied == 'def greet(name):\n    return f"hi {name}"  # a comment\n'
        context.close()


def test_a_reply_is_announced_once_complete_and_motion_can_be_reduced(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        assert page.get_attribute("#messages", "aria-live") is None  # no chatter per chunk
        _ask(
            page,
            "[[sim:tokens=30]] [[sim:tps=30]] tell me",
            "m.dataset.state === 'generating' && m.innerText.length > 10",
        )
        assert page.text_content("#announcer") == ""  # nothing said while it streams
        wait_reply(page, "m.dataset.state === 'done'")
        page.wait_for_function("() => document.getElementById('announcer').textContent !== ''")
        said = page.text_content("#announcer") or ""
        assert said.startswith("llama3 replied: ")

        page.emulate_media(reduced_motion="reduce")
        _ask(page, "[[sim:tokens=200]] [[sim:tps=10]] slowly", "m.dataset.state === 'generating'")
        animation = page.evaluate(
            "() => getComputedStyle([...document.querySelectorAll('.msg.assistant')].pop()"
            ".querySelector('.body'), '::after').animationName"
        )
        assert animation == "none"


def serious_violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(content=AXE.read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target)}))"
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_axe_finds_nothing_serious_in_either_theme_or_on_a_phone(dev_farm: str) -> None:
    with chromium() as browser:
        for scheme, size in (
            ("light", {"width": 1280, "height": 800}),
            ("dark", {"width": 1280, "height": 800}),
            ("dark", {"width": 390, "height": 844}),
            ("light", {"width": 390, "height": 844}),
        ):
            context = browser.new_context(
                bypass_csp=True,  # to inject axe; the page's own CSP is tested elsewhere
                color_scheme=scheme,
                viewport=size,
            )
            page = context.new_page()
            page.goto(dev_farm)
            page.wait_for_selector("#sim-banner:not([hidden])")
            _echo(page, FIXTURE)
            problems = serious_violations(page)
            assert problems == [], f"{scheme} {size}: {json.dumps(problems, indent=1)}"
            page.goto(dev_farm + "farm")
            page.wait_for_selector("#workers tbody tr")
            problems = serious_violations(page)
            assert problems == [], f"farm page, {scheme} {size}: {json.dumps(problems, indent=1)}"
            context.close()


def test_a_reply_says_who_served_it_how_fast_and_when(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        _ask(
            page,
            "[[sim:tokens=12]] [[sim:tps=40]] how fast?",
            "m.dataset.state === 'done' && m.querySelector('.meta').textContent",
        )
        meta = page.evaluate(
            "() => [...document.querySelectorAll('.msg.assistant')].pop()"
            ".querySelector('.meta').textContent"
        )
        assert meta.startswith("by dev worker · 12 tokens · ")
        assert meta.endswith(" tokens/s")
        when = page.evaluate(
            "() => [...document.querySelectorAll('.msg')]"
            ".map((m) => m.querySelector('time').dateTime)"
        )
        assert len(when) == 2
        assert all(w.endswith("Z") for w in when)
        # Only the latest good reply offers to be generated again.
        two = "document.querySelectorAll('.msg.assistant').length === 2"
        _ask(page, "[[sim:tokens=3]] and another", f"{two} && m.dataset.state === 'done'")
        offered = page.evaluate(
            "() => [...document.querySelectorAll('.msg.assistant')]"
            ".map((m) => !m.querySelector('.retry').hidden)"
        )
        assert offered == [False, True]


def test_the_owner_renames_and_deletes_a_chat_from_the_page(dev_farm: str) -> None:
    with chromium() as browser:
        page = chat_page(browser, dev_farm)
        _ask(page, "[[sim:tokens=3]] a chat to tidy")
        page.once("dialog", lambda dialog: dialog.accept("Tidy chat"))
        page.click("#rename")
        page.wait_for_function(
            "() => document.getElementById('thread-title').textContent === 'Tidy chat'"
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('#threads .t-title')]"
            ".some((t) => t.textContent === 'Tidy chat')"
        )
        entry = page.locator("#threads a[aria-current='page']")
        assert entry.locator(".t-summary").inner_text() == "[[sim:tokens=3]] a chat to tidy"
        assert entry.locator(".t-info").inner_text() == "1 member · just now"
        assert page.get_attribute("#threads a[aria-current='page']", "href") == page.url.replace(
            dev_farm.rstrip("/"), ""
        )
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete")
        page.wait_for_function("() => document.querySelectorAll('#threads a').length === 0")
        assert page.text_content("#thread-title") == "New chat"
        assert page.url.rstrip("/") == dev_farm.rstrip("/")
