/* queuectl dashboard, job page: while the job runs, its output and state refresh every 2 s;
   the page reloads once the state changes (to show the new attempt row). */
"use strict";
(function () {
  const EVERY_MS = 2000;

  function refresh(box) {
    const q = window.queuectl;
    const id = encodeURIComponent(box.getAttribute("data-id"));
    const attempt = box.getAttribute("data-attempt");
    q.getJSON("/api/jobs/" + id).then(function (job) {
      if (job.state !== box.getAttribute("data-state")) { window.location.reload(); return null; }
      if (!attempt || job.state !== "processing") { return null; }
      return Promise.all(["stdout", "stderr"].map(function (stream) {
        return q.getJSON("/api/jobs/" + id + "/output?attempt=" + attempt + "&stream=" + stream).then(function (out) {
          const pre = document.querySelector('pre[data-stream="' + stream + '"]');
          if (pre) { q.setText(pre, out.text); }
        });
      }));
    }).catch(function () { /* shown by the live indicator */ })
      .finally(function () { window.setTimeout(function () { refresh(box); }, EVERY_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const box = document.getElementById("job");
    const state = box && box.getAttribute("data-state");
    if (state && state !== "completed" && state !== "dead") { window.setTimeout(function () { refresh(box); }, EVERY_MS); }
  });
})();
