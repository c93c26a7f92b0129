/* queuectl dashboard, overview: the throughput and latency charts, drawn as inline SVG from
   /api/metrics/series and /api/metrics every 10 s (per-minute data; the counts refresh every second). */
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const CHARTS_EVERY_MS = 10000;

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }

  function clear(svg) { while (svg.firstChild) { svg.removeChild(svg.firstChild); } }

  // The y-axis top: four grid steps of 1, 2, 3 or 5 times a power of ten.
  function niceMax(value) {
    for (let scale = 1; ; scale *= 10) {
      for (const m of [1, 2, 3, 5]) { if (4 * m * scale >= value) { return 4 * m * scale; } }
    }
  }

  function clock(epochSeconds) {
    const d = new Date(epochSeconds * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function drawThroughput(svg, series) {
    clear(svg);
    const W = 720, H = 200, left = 40, right = 8, top = 10, bottom = 24;
    const n = series.completed.length;
    const totals = series.completed.map(function (c, i) { return c + series.failed[i]; });
    const max = niceMax(Math.max.apply(null, totals.concat([0])));
    const plotW = W - left - right, plotH = H - top - bottom, slot = plotW / n;
    for (let k = 0; k <= 4; k++) {
      const y = top + plotH - (plotH * k) / 4;
      svg.appendChild(el("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
      svg.appendChild(el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, Math.round((max * k) / 4)));
    }
    for (let i = 0; i < n; i++) {
      const x = left + i * slot + 1, w = Math.max(1, slot - 2);
      const hc = (plotH * series.completed[i]) / max, hf = (plotH * series.failed[i]) / max;
      const minute = series.start + i * series.step_seconds;
      if (hc > 0) {
        const bar = el("rect", { x: x, y: top + plotH - hc, width: w, height: hc, class: "bar-completed" });
        bar.appendChild(el("title", {}, clock(minute) + ": " + series.completed[i] + " completed"));
        svg.appendChild(bar);
      }
      if (hf > 0) {
        const bar = el("rect", { x: x, y: top + plotH - hc - hf, width: w, height: hf, class: "bar-failed" });
        bar.appendChild(el("title", {}, clock(minute) + ": " + series.failed[i] + " failed"));
        svg.appendChild(bar);
      }
    }
    for (let i = 0; i < n; i += 10) {
      svg.appendChild(el("text", { x: left + i * slot, y: H - 6, class: "axis" }, clock(series.start + i * series.step_seconds)));
    }
    svg.appendChild(el("text", { x: W - right, y: H - 6, "text-anchor": "end", class: "axis" }, "now"));
  }

  function drawLatency(svg, report) {
    clear(svg);
    const W = 720, left = 90, right = 150, rowH = 62, top = 8;
    const rows = [["Run time", report.run_time_ms], ["Queue wait", report.queue_wait_ms]];
    const keys = ["p50", "p95", "max"];
    const biggest = Math.max.apply(null, rows.map(function (r) { return r[1].max || 0; }).concat([1]));
    const scale = function (v) { return (W - left - right) * Math.log10(1 + v) / Math.log10(1 + biggest); };
    rows.forEach(function (row, r) {
      const y0 = top + r * rowH;
      svg.appendChild(el("text", { x: 0, y: y0 + 30, class: "label" }, row[0]));
      if (!row[1].count) {
        svg.appendChild(el("text", { x: left, y: y0 + 30, class: "value" }, "no data yet"));
        return;
      }
      keys.forEach(function (key, k) {
        const v = row[1][key] || 0, y = y0 + 4 + k * 17, w = Math.max(1, scale(v));
        const bar = el("rect", { x: left, y: y, width: w, height: 13, rx: 2, class: "bar-" + key });
        bar.appendChild(el("title", {}, row[0] + " " + key + ": " + v + " ms"));
        svg.appendChild(bar);
        svg.appendChild(el("text", { x: left + w + 6, y: y + 11, class: "value" }, key + " " + v + " ms"));
      });
    });
    svg.appendChild(el("text", { x: W - 4, y: 146, "text-anchor": "end", class: "axis" }, "log scale, all time"));
  }

  function ms(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " ms"; }

  function showFigures(report) {
    const shown = {
      completed_last_hour: report.completed_last_hour,
      failed_last_hour: report.failed_last_hour,
      throughput_per_second: report.throughput_per_second + " /s",
      success_rate: report.success_rate === null ? "–" : (report.success_rate * 100).toFixed(1) + "%",
      oldest_pending_age_seconds: report.oldest_pending_age_seconds === null ? "–" : report.oldest_pending_age_seconds.toFixed(1) + "s",
    };
    ["run_time_ms", "queue_wait_ms"].forEach(function (h) {
      ["p50", "p95", "max"].forEach(function (k) { shown[h + "." + k] = ms(report[h][k]); });
    });
    document.querySelectorAll("[data-metric]").forEach(function (node) {
      const key = node.getAttribute("data-metric");
      if (key in shown) { window.queuectl.setText(node, shown[key]); }
    });
  }

  function refresh() {
    const q = window.queuectl;
    Promise.all([q.getJSON("/api/metrics/series"), q.getJSON("/api/metrics")]).then(function (got) {
      drawThroughput(document.getElementById("throughput-chart"), got[0]);
      drawLatency(document.getElementById("latency-chart"), got[1]);
      showFigures(got[1]);
    }).catch(function () { /* the live indicator already says offline */ })
      .finally(function () { window.setTimeout(refresh, CHARTS_EVERY_MS); });
  }

  document.addEventListener("DOMContentLoaded", refresh);
})();
