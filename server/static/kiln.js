// Kiln web UI behaviour: the unit page's live event log and credential reveal, and the
// print buttons. Everything from the server is put into the page as text, never as HTML.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  function cell(className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    return td;
  }

  function badge(className, text) {
    const span = document.createElement("span");
    span.className = "badge " + className;
    span.textContent = text;
    return span;
  }

  function utcClock(ns) {
    const date = new Date(Math.floor(ns / 1e6));
    return { iso: date.toISOString().replace(/\.\d{3}Z$/, "Z"), clock: date.toISOString().slice(11, 23) };
  }

  function eventRow(event) {
    const row = document.createElement("tr");
    row.className = "event type-" + event.type + " fresh";
    row.dataset.eventId = String(event.id);
    const when = document.createElement("td");
    when.className = "when";
    const time = document.createElement("time");
    const stamp = utcClock(event.timestamp_ns);
    time.dateTime = stamp.iso;
    time.textContent = stamp.clock;
    when.appendChild(time);
    row.appendChild(when);
    const run = cell("run", String(event.run_id).slice(0, 8));
    run.title = event.run_id;
    row.appendChild(run);
    const depth = Math.min((String(event.name).match(/\//g) || []).length, 8);
    row.appendChild(cell("stage depth-" + depth, event.name));
    row.appendChild(cell("kind", event.type));
    const outcome = cell("outcome", "");
    if (event.result) {
      outcome.appendChild(badge("result-" + event.result, event.result));
    } else if (event.level) {
      outcome.appendChild(badge("level-" + event.level, event.level));
    } else if (event.type === "progress" && event.done !== undefined && event.done !== null) {
      outcome.textContent = event.total ? event.done + "/" + event.total : String(event.done);
    }
    row.appendChild(outcome);
    row.appendChild(cell("message", event.message || ""));
    return row;
  }

  function showRunEnd(event) {
    // A top-level finish ("manufacture", "restore", "erase") ends the run: show its state.
    if (event.type !== "finish" || String(event.name).includes("/")) {
      return;
    }
    const state = document.getElementById("unit-state");
    if (!state) {
      return;
    }
    const status = event.result === "fail" ? "failed" : "succeeded";
    state.replaceChildren(badge("status-" + status, event.name + " · " + status));
    const ended = document.getElementById("run-ended");
    if (ended) {
      ended.hidden = false;
    }
  }

  function followLog(table) {
    const body = table.tBodies[0];
    const scroller = document.getElementById("log-scroll");
    const status = document.getElementById("live-status");
    const empty = document.getElementById("empty-log");
    let lastId = Number(table.dataset.lastId || "0");
    function setStatus(state, text) {
      if (status) {
        status.dataset.state = state;
        status.textContent = text;
      }
    }
    if (scroller) {
      scroller.scrollTop = scroller.scrollHeight;
    }
    if (!window.EventSource) {
      setStatus("down", "live updates need a newer browser; reload to see new events");
      return;
    }
    const source = new EventSource(table.dataset.streamUrl + "?after=" + lastId);
    source.addEventListener("open", function () { setStatus("live", "live"); });
    source.addEventListener("error", function () { setStatus("down", "reconnecting…"); });
    source.addEventListener("unit-event", function (message) {
      const event = JSON.parse(message.data);
      if (event.id <= lastId) {
        return;
      }
      lastId = event.id;
      const atBottom = !scroller ||
        scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
      body.appendChild(eventRow(event));
      if (empty) {
        empty.hidden = true;
      }
      if (scroller && atBottom) {
        scroller.scrollTop = scroller.scrollHeight;
      }
      showRunEnd(event);
    });
  }

  function revealButton(button) {
    const shown = document.getElementById("revealed-password");
    const error = document.getElementById("reveal-error");
    button.addEventListener("click", async function () {
      button.disabled = true;
      error.hidden = true;
      try {
        const response = await fetch(button.dataset.url, {
          method: "POST",
          headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
          credentials: "same-origin",
          cache: "no-store",
        });
        const body = await response.json().catch(function () { return {}; });
        if (!response.ok) {
          throw new Error(body.detail || response.status + " " + response.statusText);
        }
        shown.textContent = body.admin_password;
        shown.hidden = false;
        button.hidden = true;
      } catch (failure) {
        error.textContent = "Could not reveal the password: " + failure.message;
        error.hidden = false;
        button.disabled = false;
      }
    });
  }

  // A rollout's page: its state and each wave's counts, refreshed every 2 s from the API.
  function followRollout(status) {
    const url = status.dataset.follow;
    async function refresh() {
      try {
        const response = await fetch(url, { headers: { "Accept": "application/json" } });
        if (!response.ok) {
          throw new Error(String(response.status));
        }
        const rollout = await response.json();
        const state = document.getElementById("rollout-state");
        state.textContent = rollout.state;
        state.className = "badge rollout-" + rollout.state;
        document.getElementById("rollout-reason").textContent = rollout.reason;
        rollout.waves.forEach(function (wave) {
          const row = document.querySelector('tr[data-wave="' + wave.number + '"]');
          if (!row) {
            return;
          }
          ["finished", "failed", "open", "skipped"].forEach(function (field) {
            row.querySelector('[data-field="' + field + '"]').textContent = String(wave[field]);
          });
          row.querySelector('[data-field="progress"]').value = wave.finished;
          if (wave.started_ns) {
            row.querySelector('[data-field="started"]').textContent = utcClock(wave.started_ns).iso;
          }
        });
        status.textContent = "live";
      } catch (error) {
        status.textContent = "reconnecting…";
      }
      window.setTimeout(refresh, 2000);
    }
    window.setTimeout(refresh, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const following = document.getElementById("live-status");
    if (following) {
      followRollout(following);
    }
    const table = document.getElementById("timeline");
    if (table) {
      followLog(table);
    }
    const reveal = document.getElementById("reveal");
    if (reveal) {
      revealButton(reveal);
    }
    document.querySelectorAll(".print-button").forEach(function (button) {
      button.addEventListener("click", function () { window.print(); });
    });
  });
})();
