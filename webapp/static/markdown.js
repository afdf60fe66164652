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
})(window);
