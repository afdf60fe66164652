// A small markdown renderer that is safe by construction: the text is HTML-escaped first,
// and only a fixed set of tags is produced afterwards. Links are limited to http(s).
"use strict";
(function (global) {
  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function inline(s) {
    return s
      .replace(/`([^`]+)`/g, "<code>$1</code>")
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
        '<a href="$2" rel="noopener noreferrer nofollow" target="_blank">$1</a>');
  }
  function render(text) {
    const out = [];
    const parts = text.split(/```/);
    parts.forEach(function (part, i) {
      if (i % 2 === 1) {
        const body = part.replace(/^[^\n]*\n/, "");
        out.push("<pre><code>" + escapeHtml(body) + "</code></pre>");
        return;
      }
      escapeHtml(part).split(/\n{2,}/).forEach(function (block) {
        if (!block.trim()) return;
        const lines = block.split("\n");
        if (lines.every(function (l) { return /^\s*([-*]|\d+\.)\s+/.test(l) || !l.trim(); })) {
          const ordered = /^\s*\d+\./.test(lines[0]);
          const items = lines.filter(function (l) { return l.trim(); }).map(function (l) {
            return "<li>" + inline(l.replace(/^\s*([-*]|\d+\.)\s+/, "")) + "</li>";
          });
          out.push((ordered ? "<ol>" : "<ul>") + items.join("") + (ordered ? "</ol>" : "</ul>"));
        } else if (/^#{1,4}\s/.test(block)) {
          const level = Math.min(block.match(/^#+/)[0].length + 2, 6);
          out.push("<h" + level + ">" + inline(block.replace(/^#+\s*/, "")) + "</h" + level + ">");
        } else {
          out.push("<p>" + inline(block).replace(/\n/g, "<br>") + "</p>");
        }
      });
    });
    return out.join("");
  }
  global.renderMarkdown = render;
})(window);
