/* queuectl dashboard, workers page: managers and running jobs refresh every 2 s (textContent only). */
"use strict";
(function () {
  const EVERY_MS = 2000;

  function uptime(seconds) {
    const s = Math.max(0, Math.floor(seconds)), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    const pad = function (n) { return String(n).padStart(2, "0"); };
    return h ? h + "h " + pad(m) + "m " + pad(s % 60) + "s" : m + "m " + pad(s % 60) + "s";
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = String(text);
    row.appendChild(td);
    return td;
  }

  function fill(tbody, items, columns, emptyText, build) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    if (!items.length) {
      const row = document.createElement("tr");
      cell(row, emptyText, "empty").colSpan = columns;
      tbody.appendChild(row);
      return;
    }
    items.forEach(function (item) {
      const row = document.createElement("tr");
      build(row, item);
      tbody.appendChild(row);
    });
  }

  function show(info) {
    fill(document.getElementById("managers"), info.managers, 4, "No worker manager running", function (row, m) {
      cell(row, m.host); cell(row, m.pid, "num"); cell(row, m.workers, "num"); cell(row, uptime(m.uptime_seconds), "num");
    });
    fill(document.getElementById("running"), info.running, 5, "No job is running", function (row, r) {
      cell(row, r.worker || "");
      const id = cell(row, "", "id");
      const link = document.createElement("a");
      link.href = "/jobs/" + encodeURIComponent(r.job.id);
      link.title = r.job.id;
      link.textContent = r.job.id.slice(0, 8);
      id.appendChild(link);
      const command = cell(row, "", "command");
      const code = document.createElement("code");
      code.textContent = r.job.command;
      command.appendChild(code);
      cell(row, r.job.attempts, "num");
      cell(row, r.job.started_at || "", "time");
    });
    window.queuectl.setText(document.getElementById("running-total"), info.running_total);
  }

  function refresh() {
    window.queuectl.getJSON("/api/workers").then(show).catch(function () { /* offline */ })
      .finally(function () { window.setTimeout(refresh, EVERY_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () { window.setTimeout(refresh, EVERY_MS); });
})();
