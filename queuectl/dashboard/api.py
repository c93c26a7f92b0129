"""The JSON API under /api: the documents of the CLI's `--json`, and the DLQ actions.

A POST answers JSON to a script; to a browser's form (it asks for text/html) it answers with a
redirect back to the page and a one-line message.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, request, url_for

from ..core.errors import ValidationError
from ..core.job import JobState
from . import data
from .context import current, local_path, wants_html

blueprint = Blueprint("api", __name__, url_prefix="/api")

# Jobs a list answers by default (as `queuectl list`) and at most.
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
STREAMS = ("stdout", "stderr")


def int_arg(name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    """A whole-number query argument in [low, high]; ValidationError (400) otherwise."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number, not '{raw}'") from None
    if value < low or (high is not None and value > high):
        raise ValidationError(f"{name} must be between {low} and {high}" if high is not None
                              else f"{name} must be at least {low}")
    return value


def state_arg() -> JobState | None:
    raw = request.args.get("state", "").strip().lower()
    if not raw:
        return None
    try:
        return JobState(raw)
    except ValueError:
        raise ValidationError(f"unknown state '{raw}' (one of {', '.join(s.value for s in JobState)})") from None


@blueprint.get("/status")
def status() -> Response:
    return jsonify(data.status_data(current().manager))


@blueprint.get("/jobs")
def jobs() -> Response:
    limit = int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    offset = int_arg("offset", 0, 0) or 0
    return jsonify(data.jobs_page(current().manager, state_arg(), limit, offset))


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    return jsonify(current().manager.resolve(job_id).public_dict())


@blueprint.get("/jobs/<job_id>/output")
def output(job_id: str) -> Response:
    manager = current().manager
    stream = request.args.get("stream", "stdout").strip().lower() or "stdout"
    if stream not in STREAMS:
        raise ValidationError(f"stream must be stdout or stderr, not '{stream}'")
    found = manager.resolve(job_id)
    return jsonify(data.output_data(manager, found, int_arg("attempt", None, 1), stream))


@blueprint.get("/metrics")
def metrics() -> Response:
    return jsonify(current().manager.metrics())


@blueprint.get("/metrics/series")
def metrics_series() -> Response:
    return jsonify(data.metrics_series(current().manager))


@blueprint.get("/workers")
def workers() -> Response:
    return jsonify(data.workers_data(current().manager))


@blueprint.get("/dlq")
def dlq() -> Response:
    limit = int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    offset = int_arg("offset", 0, 0) or 0
    return jsonify(data.jobs_page(current().manager, JobState.DEAD, limit, offset))


@blueprint.post("/dlq/<job_id>/retry")
def retry(job_id: str) -> Any:
    dashboard = current()
    with dashboard.lock:
        retried = dashboard.manager.retry_dead(job_id)
    return _done(retried.public_dict(), f"Job {retried.id} moved from DLQ to pending queue")


@blueprint.post("/dlq/retry-all")
def retry_all() -> Any:
    dashboard = current()
    with dashboard.lock:
        done = dashboard.manager.retry_all_dead()
    message = f"Moved {len(done.retried)} job(s) from DLQ to pending queue"
    if done.left:
        message += f"; left {len(done.left)} in the DLQ: " + "; ".join(reason for _job_id, reason in done.left)
    return _done({"retried": len(done.retried), "ids": [j.id for j in done.retried],
                  "left": [{"id": job_id, "reason": reason} for job_id, reason in done.left]}, message)


@blueprint.post("/dlq/<job_id>/purge")
def purge(job_id: str) -> Any:
    dashboard = current()
    with dashboard.lock:
        gone = data.purge_one(dashboard.manager, job_id)
    return _done({"purged": 1, "id": gone.id}, f"Job {gone.id} removed from the DLQ")


@blueprint.post("/dlq/purge")
def purge_all() -> Any:
    dashboard = current()
    with dashboard.lock:
        removed = dashboard.manager.purge(JobState.DEAD)
    return _done({"purged": removed}, f"Removed {removed} dead job(s)")


def _done(document: dict[str, Any], message: str) -> Any:
    """JSON for a script; for a browser form, the message and a redirect back."""
    if wants_html():
        flash(message, "ok")
        return redirect(local_path(request.form.get("next"), url_for("pages.dlq")), code=303)
    return jsonify(document)
