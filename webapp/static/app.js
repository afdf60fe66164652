"use strict";
// The chat page: REST for actions, one websocket per open thread for live updates.
(function () {
  const $ = (id) => document.getElementById(id);
  const STATE_LABEL = {
    queued: "waiting for a llama…",
    generating: "",
    done: "",
    failed: "I have failed you",
    timed_out: "timed out",
    cancelled: "stopped",
  };
  const REFERENCE = /^ {0,3}\[[^\]]+\]:/m;  // a link reference definition
  const LONG_TEXT = 4000;  // characters: longer texts are put in the page a slice at a time
  const app = { threadId: null, socket: null, messages: new Map(), pending: new Map(),
                waiting: new Map(), retryMs: 250, models: null, me: null, members: [],
                hasMore: false };

  function threadFromPath() {
    const m = location.pathname.match(/^\/t\/([A-Za-z0-9_.-]+)$/);
    return m ? m[1] : null;
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined, credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || response.statusText);
      error.status = response.status;
      error.retryAfter = data && data.retry_after_s;
      throw error;
    }
    return data;
  }

  function notice(text) { $("notice").textContent = text || ""; }

  // What a refusal means to a person: a rate limit says when to try again.
  function explain(error) {
    const text = error.message.charAt(0).toUpperCase() + error.message.slice(1);
    if (error.status === 429) return `Slow down! ${text}.`;
    // the farm says when itself ("the farm is busy: try again in about 40 s")
    const said = /try again/i.test(text);
    const wait = error.retryAfter && !said ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : "";
    return `${text}.${wait}`;
  }

  // --- scrolling: stay at the bottom while there; otherwise offer a way back ---------------

  function nearBottom() {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function toBottom() {
    $("messages").scrollTop = $("messages").scrollHeight;
    $("new-messages").hidden = true;
  }

  // Run a change to the list; follow it down if the reader was at the bottom, else
  // (when it brought something new) show the "New messages" button.
  function changing(fresh, change) {
    const stick = nearBottom();
    change();
    if (stick) toBottom();
    else if (fresh) $("new-messages").hidden = false;
  }

  // --- rendering -------------------------------------------------------------------------

  function place(el, message) {
    el.dataset.created = String(message.created_at);
    const list = $("message-list");
    const later = [...list.children].find((other) =>
      Number(other.dataset.created) > message.created_at);
    list.insertBefore(el, later || null);
  }

  function render(message) {
    let el = document.querySelector(`[data-id="${message.message_id}"]`);
    if (!el) {
      el = document.createElement("article");
      el.dataset.id = message.message_id;
      el.innerHTML = '<div class="who"><span class="name"></span> <time></time></div>' +
        '<div class="body"></div>' +
        '<div class="foot"><span class="versions" hidden>' +
        '<button type="button" class="prev" aria-label="Previous version">‹</button>' +
        '<span class="which"></span>' +
        '<button type="button" class="next" aria-label="Next version">›</button></span>' +
        '<span class="state"></span><span class="meta"></span>' +
        '<button type="button" class="edit plain" hidden>Edit</button>' +
        '<button type="button" class="stop" hidden>Stop</button>' +
        '<button type="button" class="retry" hidden>Retry</button></div>';
      el.querySelector(".stop").addEventListener("click", () => act(el.dataset.id, "stop"));
      el.querySelector(".retry").addEventListener("click", () => act(el.dataset.id, "retry"));
      el.querySelector(".edit").addEventListener("click", () => startEdit(el));
      el.querySelector(".prev").addEventListener("click", () => showVersion(el, -1));
      el.querySelector(".next").addEventListener("click", () => showVersion(el, +1));
      place(el, message);
    }
    el.className = `msg ${message.role} ${message.state}`;
    el.dataset.state = message.state;
    el.querySelector(".who .name").textContent = message.role === "assistant"
      ? `🦙 ${message.model || message.author}` : message.author;
    const at = new Date(message.created_at * 1000);
    const time = el.querySelector(".who time");
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    el.querySelector(".meta").textContent = served(message);
    const body = el.querySelector(".body");
    show(el, body, message);
    body.classList.toggle("cursor", message.state === "generating");
    let label = STATE_LABEL[message.state] || "";
    if (message.state === "queued" && message.queue_position) {
      label += ` (#${message.queue_position} in the queue)`;
    }
    if (message.state === "cancelled" && message.error) label = message.error;  // "stopped by …"
    else if (message.error && message.state !== "done") label += `: ${message.error}`;
    el.querySelector(".state").textContent = label;
    const reply = message.role === "assistant";
    el.querySelector(".stop").hidden = !reply || isFinal(message.state);
    const retry = el.querySelector(".retry");
    retry.hidden = !reply || !isFinal(message.state) || (message.state === "done" && !latest(el));
    retry.textContent = message.state === "done" ? "Regenerate" : "Retry";
    el.querySelector(".edit").hidden = reply || !app.me || message.user_id !== app.me.user_id ||
      !!el.querySelector(".editor");
    const versions = message.versions || [];
    const which = versions.indexOf(message.message_id);
    el.querySelector(".versions").hidden = versions.length < 2;
    el.querySelector(".which").innerHTML = `<span aria-hidden="true">${which + 1} / ${versions.length}` +
      `</span><span class="visually-hidden">Version ${which + 1} of ${versions.length}</span>`;
    el.querySelector(".prev").disabled = which <= 0;
    el.querySelector(".next").disabled = which >= versions.length - 1;
  }

  // --- editing and branches -------------------------------------------------------------

  // Edit one of your messages: the thread branches there, and the page shows the new
  // branch (the earlier version stays, one of the versions to switch between).
  function startEdit(el) {
    if (el.querySelector(".editor")) return;
    const message = app.messages.get(el.dataset.id);
    const form = document.createElement("form");
    form.className = "editor";
    const id = `edit-${message.message_id}`;
    form.innerHTML = `<label for="${id}" class="visually-hidden">Edit your message</label>` +
      `<textarea id="${id}" rows="3"></textarea><div class="row">` +
      '<button type="submit">Save and send</button>' +
      '<button type="button" class="plain cancel">Cancel</button></div>';
    const box = form.querySelector("textarea");
    box.value = message.content;
    const close = () => {
      form.remove();
      el.querySelector(".body").hidden = false;
      el.querySelector(".edit").hidden = false;
    };
    form.querySelector(".cancel").onclick = close;
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") { close(); el.querySelector(".edit").focus(); }
      else if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = box.value.trim();
      if (!text) return;
      try {
        await api("POST", `/api/threads/${app.threadId}/messages/${message.message_id}/edit`,
                  { text, model: $("model").value || null });
        notice("");
        connect(app.threadId);  // the new branch, from a fresh snapshot
      } catch (error) {
        notice(explain(error));
      }
    });
    el.querySelector(".body").hidden = true;
    el.querySelector(".edit").hidden = true;
    el.querySelector(".body").after(form);
    box.focus();
  }

  async function showVersion(el, step) {  // switch to the previous or next version
    const versions = app.messages.get(el.dataset.id).versions || [];
    const wanted = versions[versions.indexOf(el.dataset.id) + step];
    if (!wanted) return;
    try {
      await api("POST", `/api/threads/${app.threadId}/branch`, { message_id: wanted });
      notice("");
      app.focusAfterSnapshot = wanted;
      connect(app.threadId);
    } catch (error) {
      notice(explain(error));
    }
  }

  // A message the page has not seen yet is shown when it continues the branch on screen
  // (it follows the latest message shown); one that follows a message not seen yet waits
  // for it; one that follows an earlier message belongs to another branch, and the
  // thread event that comes with a new branch reloads the page's snapshot.
  function continuesBranch(message) {
    const list = $("message-list");
    if (!message.parent_id) return !list.firstElementChild && !app.hasMore;
    if (!app.messages.has(message.parent_id)) {
      app.waiting.set(message.parent_id, message);
      return false;
    }
    const last = list.lastElementChild;
    return !!last && last.dataset.id === message.parent_id;
  }

  // Only this message is rendered again when its text changes (never the whole thread),
  // and only when it did change; while it streams, only its last block (MarkdownStream).
  function show(el, body, message) {
    const text = message.content;
    if (el.shownText === text) return;
    if (el.slicing) { el.slicing(); el.slicing = null; }
    if (message.state !== "generating" && !el.stream && text.length > LONG_TEXT) {
      // a long text shown whole (a snapshot, a long message): a slice at a time
      el.slicing = window.renderMarkdownInSlices(body, text, (insert) => changing(false, insert));
    } else if (message.state === "generating") {
      if (!el.stream || !el.stream.grow(text)) {
        el.stream = new window.MarkdownStream(body);
        if (!el.stream.grow(text)) { body.innerHTML = window.renderMarkdown(text); el.stream = null; }
      }
    } else if (!el.stream || !el.stream.grow(text) || REFERENCE.test(text)) {
      // rendered whole, unless it streamed: the blocks shown are what the whole text
      // renders to, except where a link's definition comes after its use
      body.innerHTML = window.renderMarkdown(text);
      el.stream = null;
    } else {
      el.stream = null;
    }
    el.shownText = text;
  }

  // Screen readers hear a reply once, when it is complete (not every chunk as it streams).
  function announce(message, known) {
    if (message.role !== "assistant" || !known || isFinal(known.state)) return;
    if (message.state === "done") {
      $("announcer").textContent = `${message.model || "The model"} replied: ${message.content}`;
    } else if (isFinal(message.state)) {
      $("announcer").textContent = `The reply ${message.state.replace("_", " ")}`;
    }
  }

  // A message added or changed; ``shown``: it is on the branch shown (a snapshot's).
  function upsert(message, shown) {
    const known = app.messages.get(message.message_id);
    if (!known && !shown && !continuesBranch(message)) return;
    // Keep streamed text that is ahead of the server's copy: while generating (it stores
    // the text about once a second), and when the reply was stopped (the worker's last
    // text follows, and the stored copy catches up).
    const stopped = ["cancelled", "timed_out", "failed"].includes(message.state);
    if (known && known.job_id === message.job_id && known.content_seq > message.content_seq &&
        (message.state === "generating" || (stopped && known.content.startsWith(message.content)))) {
      message = Object.assign({}, message, { content: known.content, content_seq: known.content_seq });
    }
    app.messages.set(message.message_id, message);
    changing(!known, () => render(message));
    if (!known && message.role === "assistant") onlyLatestRegenerates();
    announce(message, known);
    const next = app.waiting.get(message.message_id);
    if (next) { app.waiting.delete(message.message_id); upsert(next); }
  }

  // What the farm did for a finished reply: the worker, its tokens and their speed
  // (characters when the model reported no tokens).
  function served(message) {
    if (message.role !== "assistant" || message.state !== "done") return "";
    const parts = [];
    if (message.served_by) parts.push(`by ${message.served_by}`);
    const tokens = message.completion_tokens;
    if (tokens != null) parts.push(`${tokens} tokens`);
    else parts.push(`${message.content.length} characters`);
    if (tokens != null && message.generation_s > 0) {
      parts.push(`${(tokens / message.generation_s).toFixed(1)} tokens/s`);
    }
    return parts.join(" · ");
  }

  function onlyLatestRegenerates() {  // a new reply came: the one before stops offering it
    document.querySelectorAll(".msg.assistant.done").forEach((el) => {
      if (!latest(el)) el.querySelector(".retry").hidden = true;
    });
  }

  function latest(el) {  // the last reply of the thread (a good one may be regenerated)
    const replies = document.querySelectorAll(".msg.assistant");
    return replies[replies.length - 1] === el;
  }

  function ago(seconds) {  // "just now", "5 min ago", "3 h ago", or the date
    const passed = Date.now() / 1000 - seconds;
    if (passed < 60) return "just now";
    if (passed < 3600) return `${Math.floor(passed / 60)} min ago`;
    if (passed < 86400) return `${Math.floor(passed / 3600)} h ago`;
    return new Date(seconds * 1000).toLocaleDateString();
  }

  function isFinal(state) { return !["queued", "generating"].includes(state); }

  async function act(messageId, action) {  // "stop" or "retry" a reply
    try {
      upsert(await api("POST", `/api/threads/${app.threadId}/messages/${messageId}/${action}`));
      notice("");
    } catch (error) {
      notice(explain(error));
    }
  }

  function applyChunk(event) {
    const message = [...app.messages.values()].find((m) => m.job_id === event.job_id);
    if (!message || isFinal(message.state)) return;
    if (message.attempt !== undefined && event.attempt > message.attempt) {
      message.content = ""; message.content_seq = -1;
    }
    message.attempt = event.attempt;
    const pending = app.pending.get(event.job_id) || new Map();
    pending.set(event.seq, event.text);
    app.pending.set(event.job_id, pending);
    while (pending.has(message.content_seq + 1)) {
      message.content += pending.get(message.content_seq + 1);
      pending.delete(message.content_seq + 1);
      message.content_seq += 1;
    }
    for (const seq of pending.keys()) if (seq <= message.content_seq) pending.delete(seq);
    message.state = "generating";
    changing(true, () => render(message));
    if (pending.size) watchGap(event.job_id, message.content_seq);
  }

  // A chunk missing for a while (lost while this page's server reconnected to the
  // broker): start again from a fresh snapshot, which the coordinator keeps whole.
  function watchGap(jobId, stuckAt) {
    if (app.gapTimer) return;
    app.gapTimer = setTimeout(() => {
      app.gapTimer = null;
      const message = [...app.messages.values()].find((m) => m.job_id === jobId);
      const pending = app.pending.get(jobId);
      if (message && !isFinal(message.state) && pending && pending.size &&
          message.content_seq === stuckAt && app.threadId) {
        connect(app.threadId);
      }
    }, 3000);
  }

  // --- members and sharing ---------------------------------------------------------------

  function isMember() {
    return !!app.me && app.members.some((m) => m.user_id === app.me.user_id);
  }

  function renderMembers() {
    const open = !!app.threadId;
    const names = app.members.map((m) => m.name);
    const box = $("members");
    box.hidden = !open;
    box.textContent = names.length === 1 ? `1 member: ${names[0]}`
      : `${names.length} members: ${names.join(", ")}`;
    box.title = names.join("\n");
    $("share").hidden = !open;
    $("join").hidden = !open || isMember();
    $("leave").hidden = !open || !isMember();
    $("rename").hidden = !open || !app.owner;
    $("delete").hidden = !open || !app.owner;
  }

  function threadChanged(thread) {  // renamed, or deleted by its owner (null)
    if (thread === null) {
      history.pushState({}, "", "/");
      openThread(null);
      notice("This chat was deleted by its owner.");
    } else {
      $("thread-title").textContent = thread.title;
    }
    loadThreads().catch(() => {});
  }

  async function renameThread() {
    const title = window.prompt("Name this chat", $("thread-title").textContent);
    if (title === null || !title.trim()) return;
    try {
      threadChanged(await api("POST", `/api/threads/${app.threadId}/rename`, { title: title.trim() }));
    } catch (error) {
      notice(explain(error));
    }
  }

  async function deleteThread() {
    if (!window.confirm("Delete this chat and its messages for everyone in it?")) return;
    try {
      await api("DELETE", `/api/threads/${app.threadId}`);
      threadChanged(null);
      notice("Chat deleted.");
    } catch (error) {
      notice(explain(error));
    }
  }

  async function membership(action) {  // "join" or "leave" the open thread
    try {
      app.members = await api("POST", `/api/threads/${app.threadId}/${action}`);
      renderMembers();
      notice(action === "join" ? "You joined this chat." : "You left this chat.");
      loadThreads();
    } catch (error) {
      notice(explain(error));
    }
  }

  async function share() {
    const link = `${location.origin}/t/${app.threadId}`;
    try {
      await navigator.clipboard.writeText(link);
      notice(`Link copied: ${link} (anyone with it can read and join, up to 25 people)`);
    } catch (e) {
      notice(`Share this link: ${link} (anyone with it can read and join, up to 25 people)`);
    }
  }

  async function reroll() {
    try {
      app.me = await api("POST", "/api/me/name");
      $("identity").textContent = `You are ${app.me.name}`;
      notice("");
    } catch (error) {
      notice(explain(error));
    }
  }

  // --- live updates ----------------------------------------------------------------------

  function connect(threadId) {
    if (app.socket) { app.socket.onclose = null; app.socket.close(); }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/threads/${threadId}`);
    app.socket = socket;
    socket.onopen = () => { app.retryMs = 250; };
    // One event per websocket message, or several in a list (the server batches what
    // queued up for this page while it was sending).
    socket.onmessage = (raw) => {
      const data = JSON.parse(raw.data);
      (Array.isArray(data) ? data : [data]).forEach(handleEvent);
    };
    function handleEvent(event) {
      if (event.type === "snapshot") {
        $("message-list").innerHTML = ""; app.messages.clear(); app.pending.clear();
        app.waiting.clear();
        $("thread-title").textContent = event.thread.title;
        event.messages.forEach((message) => upsert(message, true));  // one branch
        app.members = event.members;
        app.owner = event.owner;
        app.hasMore = event.has_more;
        $("load-older").hidden = !app.hasMore;
        renderMembers();
        toBottom();
        const focus = app.focusAfterSnapshot && document.querySelector(
          `[data-id="${app.focusAfterSnapshot}"] .versions button:not(:disabled)`);
        if (focus) focus.focus();
        app.focusAfterSnapshot = null;
      } else if (event.type === "message") {
        upsert(event.message);
        if (event.message.role === "user") loadThreads();
      } else if (event.type === "members") {
        app.members = event.members;
        renderMembers();
      } else if (event.type === "thread") {
        threadChanged(event.thread);
        // another branch shown (a message edited, a version chosen): start again from it
        const leaf = event.thread && event.thread.leaf_id;
        if (leaf && !app.messages.has(leaf)) connect(threadId);
      } else if (event.type === "chunk") {
        applyChunk(event);
      }
    }
    socket.onclose = (e) => {
      if (app.threadId !== threadId) return;
      if (e.code === 4004) { notice("This chat does not exist."); return; }
      const delay = e.code === 4000 ? 0 : app.retryMs;
      app.retryMs = Math.min(app.retryMs * 2, 10000);
      setTimeout(() => { if (app.threadId === threadId) connect(threadId); }, delay);
    };
  }

  // Older messages, 20 at a time, above the ones shown, keeping what is on screen in place.
  async function loadOlder() {
    const first = $("message-list").firstElementChild;
    if (!first) return;
    const threadId = app.threadId;
    try {
      const page = await api(
        "GET", `/api/threads/${threadId}/messages?before=${encodeURIComponent(first.dataset.id)}`);
      if (app.threadId !== threadId) return;
      const box = $("messages");
      const fromBottom = box.scrollHeight - box.scrollTop;
      for (const message of page.messages) {
        if (!app.messages.has(message.message_id)) {
          app.messages.set(message.message_id, message);
          render(message);
        }
      }
      box.scrollTop = box.scrollHeight - fromBottom;
      app.hasMore = page.has_more;
      $("load-older").hidden = !app.hasMore;
    } catch (error) {
      notice(explain(error));
    }
  }

  function openThread(threadId) {
    app.threadId = threadId;
    $("message-list").innerHTML = "";
    app.messages.clear();
    app.waiting.clear();
    app.members = [];
    $("load-older").hidden = true;
    $("new-messages").hidden = true;
    $("system-box").hidden = !!threadId;
    document.querySelectorAll("#threads a").forEach((a) => current(a, a.dataset.id === threadId));
    sidebar(false);
    renderMembers();
    if (threadId) connect(threadId);
    else { $("thread-title").textContent = "New chat"; if (app.socket) app.socket.close(); }
  }

  // --- data ------------------------------------------------------------------------------

  async function loadThreads() {
    const threads = await api("GET", "/api/threads");
    const nav = $("threads");
    nav.innerHTML = "";
    for (const t of threads) {
      const a = document.createElement("a");
      a.href = `/t/${t.thread_id}`;
      a.dataset.id = t.thread_id;
      const title = document.createElement("span");
      title.className = "t-title";
      title.textContent = t.title;
      const info = document.createElement("span");
      info.className = "t-info";
      const members = t.members === 1 ? "1 member" : `${t.members} members`;
      info.textContent = `${members} · ${ago(t.updated_at)}`;
      const summary = document.createElement("span");
      summary.className = "t-summary";
      summary.textContent = t.description;
      a.append(title, summary, info);
      a.title = t.description;
      if (t.thread_id === app.threadId) {
        current(a, true);
        $("thread-title").textContent = t.title;
      }
      a.onclick = (e) => { e.preventDefault(); history.pushState({}, "", a.href); openThread(t.thread_id); };
      nav.appendChild(a);
    }
  }

  async function loadModels() {
    const fleet = await api("GET", "/api/models");
    const select = $("model");
    const chosen = select.value;
    const names = fleet.models.length ? fleet.models : [];
    const unavailable = fleet.unavailable || [];
    const listed = JSON.stringify([names, unavailable]);
    if (listed !== app.models) {
      select.innerHTML = "";
      for (const name of names) {
        const option = document.createElement("option");
        option.value = name; option.textContent = name;
        select.appendChild(option);
      }
      // configured models no online worker serves: shown, not offered
      for (const name of unavailable) {
        const option = document.createElement("option");
        option.value = name; option.textContent = `${name} (no worker online)`;
        option.disabled = true;
        select.appendChild(option);
      }
      if (names.includes(chosen)) select.value = chosen;
      app.models = listed;
    }
    $("sim-banner").hidden = !fleet.simulated;
    const warn = $("fleet-banner");
    warn.hidden = fleet.workers_online > 0;
    warn.textContent = "No workers are online right now: messages cannot be answered until one connects.";
  }

  async function send(event) {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text) return;
    $("send").disabled = true;
    notice("");
    try {
      if (!app.threadId) {
        const thread = await api("POST", "/api/threads", { system_prompt: $("system-prompt").value });
        history.pushState({}, "", `/t/${thread.thread_id}`);
        openThread(thread.thread_id);
      }
      const model = $("model").value || null;
      const sent = await api("POST", `/api/threads/${app.threadId}/messages`, { text, model });
      upsert(sent.user_message);
      upsert(sent.reply);
      toBottom();
      $("input").value = "";
      loadThreads();
    } catch (e) {
      notice(explain(e));
    } finally {
      $("send").disabled = false;
    }
  }

  function current(link, yes) {  // the open chat: shown, and said (aria-current)
    link.classList.toggle("active", yes);
    if (yes) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }

  function sidebar(open) {
    document.body.classList.toggle("show-sidebar", open);
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  }

  async function copyCode(event) {
    const button = event.target.closest(".copy");
    if (!button) return;
    const code = button.closest(".code").querySelector("code").innerText;
    try {
      await navigator.clipboard.writeText(code);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  }

  function showTheme(theme) { $("theme").textContent = `Theme: ${theme}`; }

  async function start() {
    $("composer").addEventListener("submit", send);
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
    });
    $("new-chat").onclick = () => { history.pushState({}, "", "/"); openThread(null); };
    $("toggle-sidebar").onclick = () => sidebar(!document.body.classList.contains("show-sidebar"));
    $("message-list").addEventListener("click", copyCode);
    $("messages").addEventListener("scroll", () => { if (nearBottom()) $("new-messages").hidden = true; });
    $("new-messages").onclick = toBottom;
    $("load-older").onclick = loadOlder;
    $("share").onclick = share;
    $("join").onclick = () => membership("join");
    $("leave").onclick = () => membership("leave");
    $("rename").onclick = renameThread;
    $("delete").onclick = deleteThread;
    $("reroll").onclick = reroll;
    $("theme").onclick = () => showTheme(window.farmTheme.next());
    showTheme(window.farmTheme.current());
    window.addEventListener("popstate", () => openThread(threadFromPath()));
    try {
      app.me = await api("GET", "/api/me");
      $("identity").textContent = `You are ${app.me.name}`;
      await Promise.all([loadModels(), loadThreads()]);
    } catch (e) {
      notice(`Cannot reach the farm: ${e.message}`);
    }
    openThread(threadFromPath());
    setInterval(() => loadModels().catch(() => {}), 5000);
  }
  start();
})();
