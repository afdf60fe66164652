"use strict";
// The farm page: who is online and how busy the farm is, refreshed every two seconds.
(function () {
  const $ = (id) => document.getElementById(id);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;  // names and models are user data: text only, never HTML
    if (className) td.className = className;
    return td;
  }

  function render(farm) {
    $("workers-online").textContent = farm.workers.length;
    $("queue-depth").textContent = farm.queue_depth;
    $("replies-minute").textContent = farm.replies_last_minute;
    $("tokens-per-s").textContent = farm.tokens_per_s_last_minute;
    const body = $("workers").querySelector("tbody");
    body.replaceChildren(...farm.workers.map((w) => {
      const row = document.createElement("tr");
      row.dataset.worker = w.name;
      const now = w.state === "busy" ? `busy (${w.jobs_running}/${w.capacity})` : w.state;
      row.append(
        cell(w.name + (w.simulated ? " (simulated)" : "")),
        cell(w.models.join(", ")),
        cell(now, `state-${w.state}`),
        cell(String(w.replies_served)),
        cell(String(w.recent_tokens_per_s)),
      );
      return row;
    }));
    $("farm-notice").textContent = farm.workers.length ? "" : "No workers are online right now.";
  }

  async function refresh() {
    try {
      const response = await fetch("/api/farm", { credentials: "same-origin" });
      if (!response.ok) throw new Error(response.statusText);
      render(await response.json());
    } catch (error) {
      $("farm-notice").textContent = `The farm is not answering (${error.message}); retrying…`;
    }
  }

  refresh();
  setInterval(refresh, 2000);
})();
