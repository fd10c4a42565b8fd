/*
 * Live updates for the Aegis admin (docs/admin.md, "Live updates").
 *
 * The server pushes {"type": "changed", "topics": [...]} over /ws/admin/live/ when agents, tasks,
 * jobs, the audit log or the control plane's health moved. Every element with an id and
 * data-live="<topics>" whose topics were named is then re-fetched: this page is loaded again (at
 * most once a second), and each such element is replaced by the element with the same id in the
 * fresh copy. A region holding a ticked checkbox or the focused element is left alone until the
 * operator is done with it. The server sends no data, only "look again", so the pages stay the one
 * place that decides what an operator sees.
 */
(function () {
  "use strict";

  const MIN_REFRESH_MS = 1000;
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  const ALL_TOPICS = ["agents", "tasks", "jobs", "audit", "health"];
  const REFUSED = 4403;

  const pending = new Set(); // topics announced since the last refresh
  const deferred = new Set(); // ids of regions skipped because the operator was using them
  let timer = null;
  let fetching = false;
  let lastFetchAt = 0;
  let failures = 0;
  let socket = null;

  function indicator() {
    return document.getElementById("live-status");
  }

  // What the indicator says in each state: its colour alone must not be the only sign (a red "LIVE" misled).
  const WORDS = {
    connecting: "connecting…",
    connected: "live",
    disconnected: "disconnected — retrying",
    refused: "disconnected — log in again",
  };

  function setState(state, text) {
    const el = indicator();
    if (el) {
      el.dataset.state = state;
      el.textContent = WORDS[state] || state;
      el.title = "Live updates: " + text;
    }
  }

  function topicsOf(el) {
    return (el.getAttribute("data-live") || "").split(/\s+/).filter(Boolean);
  }

  function busy(el) {
    if (el.querySelector("input[type=checkbox]:checked")) {
      return true;
    }
    const active = document.activeElement;
    return active !== null && active !== document.body && el.contains(active);
  }

  function targets(topics) {
    return Array.from(document.querySelectorAll("[id][data-live]")).filter(
      (el) => deferred.has(el.id) || topicsOf(el).some((topic) => topics.has(topic))
    );
  }

  function schedule(topics, atLeastMs) {
    topics.forEach((topic) => pending.add(topic));
    if (timer !== null || fetching) {
      return; // the running or planned refresh picks the topics up
    }
    const wait = Math.max(atLeastMs || 0, lastFetchAt + MIN_REFRESH_MS - Date.now());
    timer = window.setTimeout(refresh, wait);
  }

  async function refresh() {
    timer = null;
    const topics = new Set(pending);
    pending.clear();
    const regions = targets(topics);
    deferred.clear();
    const ready = [];
    for (const el of regions) {
      if (busy(el)) {
        deferred.add(el.id);
      } else {
        ready.push(el);
      }
    }
    if (ready.length) {
      fetching = true;
      lastFetchAt = Date.now();
      try {
        await swap(ready);
      } catch (error) {
        console.debug("aegis live: refresh failed", error);
      } finally {
        fetching = false;
      }
    }
    if (pending.size || deferred.size) {
      schedule([], MIN_REFRESH_MS);
    }
  }

  async function swap(regions) {
    const response = await fetch(window.location.href, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html", "X-Requested-With": "XMLHttpRequest" },
    });
    if (!response.ok || response.redirected) {
      return; // logged out (sent to the login page) or an error: keep what is shown
    }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const swapped = [];
    for (const el of regions) {
      if (!el.isConnected) {
        continue; // inside a region replaced a moment ago
      }
      if (busy(el)) {
        deferred.add(el.id);
        continue;
      }
      const next = fresh.getElementById(el.id);
      if (!next || next.innerHTML === el.innerHTML) {
        continue;
      }
      const imported = document.importNode(next, true);
      el.replaceWith(imported);
      imported.classList.add("live-updated");
      window.setTimeout(() => imported.classList.remove("live-updated"), 1500);
      swapped.push(imported);
    }
    if (swapped.length) {
      rebindChangelistActions(swapped);
      document.dispatchEvent(new CustomEvent("aegis:live-updated", { detail: { ids: swapped.map((el) => el.id) } }));
    }
  }

  function rebindChangelistActions(swapped) {
    // Django's actions.js binds the row checkboxes once, on page load: bind the new ones.
    if (typeof window.Actions === "function" && swapped.some((el) => el.querySelector("tr input.action-select"))) {
      window.Actions(document.querySelectorAll("tr input.action-select"));
    }
  }

  function connect() {
    const status = indicator();
    const path = (status && status.dataset.url) || "/ws/admin/live/";
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    setState("connecting", "connecting");
    socket = new WebSocket(scheme + window.location.host + path);
    socket.addEventListener("open", () => {
      setState("connected", "connected");
      // What changed between rendering the page and this socket joining the feed (or while away)
      // was never announced to it: refresh every region once.
      schedule(ALL_TOPICS);
      failures = 0;
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message && message.type === "changed" && Array.isArray(message.topics)) {
        schedule(message.topics.filter((topic) => typeof topic === "string"));
      }
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (event.code === REFUSED) {
        setState("refused", "refused: log in again");
        return;
      }
      setState("disconnected", "disconnected, reconnecting");
      const base = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)];
      failures += 1;
      window.setTimeout(connect, base / 2 + Math.random() * (base / 2));
    });
  }

  function start() {
    if (indicator() && "WebSocket" in window) {
      connect();
    }
  }

  window.aegisLive = {
    state: () => (indicator() ? indicator().dataset.state : "off"),
    refresh: (topics) => schedule(topics || ALL_TOPICS),
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
