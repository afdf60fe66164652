// Markdown as the chat shows it: markdown-it (CommonMark, tables, strikethrough, autolinks)
// with raw HTML off, so nothing a reply says can become markup of its own; links only to
// http(s) and mailto, opened apart from the page; fenced code highlighted by highlight.js
// (which escapes what it is given) under a header with its language and a Copy button.
// Both libraries are vendored (VENDORED.md); there is no build step.
"use strict";
(function (global) {
  const LANGUAGE = /^[A-Za-z0-9_+#.-]{1,32}$/;
  const md = global.markdownit({ html: false, linkify: true, breaks: true });
  const escapeHtml = md.utils.escapeHtml;

  md.validateLink = function (url) {
    return /^(https?:|mailto:)/i.test(url.trim());
  };

  const linkOpen = md.renderer.rules.link_open ||
    function (tokens, i, options, env, self) { return self.renderToken(tokens, i, options); };
  md.renderer.rules.link_open = function (tokens, i, options, env, self) {
    tokens[i].attrSet("rel", "noopener noreferrer nofollow");
    tokens[i].attrSet("target", "_blank");
    return linkOpen(tokens, i, options, env, self);
  };

  // A column's alignment as a class: the page's CSP allows no style attributes.
  ["th_open", "td_open"].forEach(function (rule) {
    md.renderer.rules[rule] = function (tokens, i, options, env, self) {
      const align = /text-align:(left|center|right)/.exec(tokens[i].attrGet("style") || "");
      if (align) {
        tokens[i].attrs = (tokens[i].attrs || []).filter(function (a) { return a[0] !== "style"; });
        tokens[i].attrJoin("class", "align-" + align[1]);
      }
      return self.renderToken(tokens, i, options);
    };
  });

  md.renderer.rules.fence = function (tokens, i) {
    const token = tokens[i];
    const asked = token.info.trim().split(/\s+/)[0] || "";
    const language = LANGUAGE.test(asked) ? asked : "";
    let code;
    if (language && global.hljs && global.hljs.getLanguage(language)) {
      code = global.hljs.highlight(token.content, { language: language, ignoreIllegals: true }).value;
    } else {
      code = escapeHtml(token.content);
    }
    const label = escapeHtml(language || "text");
    const cls = language ? ` class="hljs language-${escapeHtml(language)}"` : ' class="hljs"';
    return `<div class="code"><div class="code-head"><span class="lang">${label}</span>` +
      `<button type="button" class="copy" aria-label="Copy the ${label} code">Copy</button>` +
      `</div><pre><code${cls}>${code}</code></pre></div>`;
  };
  md.renderer.rules.code_block = function (tokens, i) {
    return `<pre><code class="hljs">${escapeHtml(tokens[i].content)}</code></pre>`;
  };

  global.renderMarkdown = function (text) { return md.render(text); };

  // A reply as it streams into ``body``: text is only ever added at its end, so every
  // top-level block but the last is finished. Those are rendered once and stay in the
  // page; only the last block is parsed and rendered again as text arrives, so a change
  // costs the size of one block, not of the whole reply. ``html()`` is what the page
  // holds: once the reply ends, the whole text is rendered once more and put in the page
  // only if it differs (a reference link defined after its use, say).
  function MarkdownStream(body) {
    this.body = body;
    this.text = "";      // the text shown
    this.offset = 0;     // where the unfinished last block starts in it
    this.doneHtml = "";  // the finished blocks' HTML, in the page
    this.tailHtml = "";  // the last block's, in the page as the body's last tailNodes nodes
    this.tailNodes = 0;
    body.textContent = "";
  }

  // Show ``text``; false when it does not continue what is shown (then render it whole).
  MarkdownStream.prototype.grow = function (text) {
    // markdown-it counts lines in text with \r\n made \n: keep offsets simple
    if (!text.startsWith(this.text) || /[\r\0]/.test(text)) return false;
    const tail = text.slice(this.offset);
    const env = {};
    const tokens = md.parse(tail, env);
    let last = 0;  // the last top-level block's first token
    for (let i = 0; i < tokens.length; i++) {
      if (tokens[i].level === 0 && tokens[i].nesting >= 0 && tokens[i].map) last = i;
    }
    for (let i = 0; i < this.tailNodes; i++) this.body.lastChild.remove();
    if (last > 0) {  // the blocks before it are finished
      const done = md.renderer.render(tokens.slice(0, last), md.options, env);
      this.body.insertAdjacentHTML("beforeend", done);
      this.doneHtml += done;
      this.offset += lineStart(tail, tokens[last].map[0]);
    }
    this.tailHtml = md.renderer.render(tokens.slice(last), md.options, env);
    const template = document.createElement("template");
    template.innerHTML = this.tailHtml;
    this.tailNodes = template.content.childNodes.length;
    this.body.append(template.content);
    this.text = text;
    return true;
  };

  MarkdownStream.prototype.html = function () { return this.doneHtml + this.tailHtml; };

  function lineStart(text, line) {  // where line number ``line`` (from 0) starts
    let at = 0;
    for (let i = 0; i < line; i++) at = text.indexOf("\n", at) + 1;
    return at;
  }

  // A long text put into ``body`` about 2 KB at a time, each slice in a task of its own,
  // so that the page answers between them: one task for a 20 KB reply held the page for
  // a few hundred milliseconds on a busy core (parsing it, building and laying out its
  // nodes). It grows as a stream does (MarkdownStream): each slice parses only from the
  // last unfinished block. ``apply(insert)`` runs each slice's insertion (the page keeps
  // its scroll around it). The first slice comes in a task of its own too. Returns what
  // cancels the slices still to come.
  global.renderMarkdownInSlices = function (body, text, apply) {
    const stream = new MarkdownStream(body);
    let end = 0;
    let timer = null;
    function slice() {
      const nl = text.indexOf("\n", Math.min(text.length, end + 2000));
      end = nl < 0 ? text.length : nl + 1;
      let grown = true;
      apply(function () { grown = stream.grow(text.slice(0, end)); });
      if (!grown) {  // not a text a stream takes (a carriage return): whole, at once
        apply(function () { body.innerHTML = md.render(text); });
        end = text.length;
      }
      timer = end < text.length ? setTimeout(slice, 0) : null;
    }
    timer = setTimeout(slice, 0);  // not in the task that asked: it may have its own work
    return function () { clearTimeout(timer); };
  };

  // Compile the renderer's and the highlighter's code paths while the page is idle, so
  // that the first reply with code does not pay for it.
  const warm = global.requestIdleCallback || function (f) { return setTimeout(f, 200); };
  warm(function () {
    md.render("# a\n\n1. *b* `c`\n   - d\n\n| e | f |\n|---|--:|\n| 1 | 2 |\n\n> g\n\n" +
      "```python\ndef h(i):\n    return i  # j\n```\n\n```js\nconst k = () => 1;\n```\n");
  });

  global.MarkdownStream = MarkdownStream;
})(window);
