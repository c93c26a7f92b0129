/* queuectl dashboard, every page: live counts (polling /api/status every second) and confirm
   prompts on dangerous forms. Job text is only ever written with textContent. */
"use strict";
(function () {
  const STATUS_EVERY_MS = 1000;
  const listeners = [];

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
        return r.json();
      });
  }

  function setText(el, text) {
    const value = String(text);
    if (el.textContent !== value) { el.textContent = value; }
  }

  function showStatus(status) {
    document.querySelectorAll("[data-count]").forEach(function (el) {
      const key = el.getAttribute("data-count");
      if (key === "total") { setText(el, status.total); }
      else if (key in status.counts) { setText(el, status.counts[key]); }
    });
    const line = document.getElementById("managers-line");
    if (line) {
      const workers = status.managers.reduce(function (n, m) { return n + m.workers; }, 0);
      setText(line, status.managers.length
        ? status.managers.length + " manager(s), " + workers + " worker(s) running"
        : "No worker manager running");
    }
    listeners.forEach(function (fn) { fn(status); });
  }

  function poll() {
    const live = document.getElementById("live");
    getJSON("/api/status").then(function (status) {
      if (live) { live.className = "live ok"; setText(live, "live"); }
      showStatus(status);
    }).catch(function () {
      if (live) { live.className = "live down"; setText(live, "offline"); }
    }).finally(function () {
      window.setTimeout(poll, STATUS_EVERY_MS);
    });
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  window.queuectl = {
    getJSON: getJSON,
    setText: setText,
    onStatus: function (fn) { listeners.push(fn); },
  };
  document.addEventListener("DOMContentLoaded", poll);
})();
