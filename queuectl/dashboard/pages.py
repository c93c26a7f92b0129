"""The HTML pages: overview, jobs, one job, the DLQ, the workers (Jinja, autoescaped)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, redirect, render_template, session, url_for

from ..core.errors import QueuectlError
from ..core.job import JobState, short_id
from . import data
from .api import int_arg, state_arg
from .context import current

blueprint = Blueprint("pages", __name__)

# Rows per page of the jobs table and of the DLQ.
PAGE_SIZE = 50
STATE_LABELS = (("pending", "Pending"), ("processing", "Processing"), ("completed", "Completed"),
                ("failed", "Failed"), ("dead", "Dead (DLQ)"))


@blueprint.app_context_processor
def common() -> dict[str, Any]:
    dashboard = current()
    try:
        counts: dict[str, int] | None = {s.value: n for s, n in dashboard.manager.counts().items()}
    except (QueuectlError, OSError):
        counts = None
    return {"can_change": dashboard.guard.can_change(), "read_only": dashboard.guard.read_only,
            "needs_token": dashboard.guard.token is not None and not session.get("auth"),
            "counts": counts, "state_labels": STATE_LABELS, "store": dashboard.manager.storage.display}


@blueprint.get("/")
def overview() -> str:
    manager = current().manager
    return render_template("overview.html", status=data.status_data(manager), report=manager.metrics())


@blueprint.get("/jobs")
def jobs() -> str:
    state = state_arg()
    offset = int_arg("offset", 0, 0) or 0
    total, found = current().manager.page(state, PAGE_SIZE, offset)
    return render_template("jobs.html", state=state.value if state else "", total=total, offset=offset,
                           jobs=list(reversed(found)), **_pager(total, offset, len(found)))


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> Any:
    manager = current().manager
    found = manager.resolve(job_id)
    attempt = int_arg("attempt", None, 1)
    if found.id != job_id:  # a prefix: show the job at its own address
        args = {"attempt": attempt} if attempt else {}
        return redirect(url_for("pages.job", job_id=found.id, **args), code=302)
    outputs = {}
    number = None
    if found.attempts:
        outputs = {stream: data.output_data(manager, found, attempt, stream) for stream in ("stdout", "stderr")}
        number = outputs["stdout"]["attempt"]
    return render_template("job.html", job=found.public_dict(), attempt=number, outputs=outputs,
                           attempts=data.attempt_numbers(found), tail_kib=data.OUTPUT_TAIL // 1024)


@blueprint.get("/dlq")
def dlq() -> str:
    offset = int_arg("offset", 0, 0) or 0
    total, found = current().manager.page(JobState.DEAD, PAGE_SIZE, offset)
    return render_template("dlq.html", total=total, offset=offset, jobs=list(reversed(found)),
                           **_pager(total, offset, len(found)))


@blueprint.get("/workers")
def workers() -> str:
    return render_template("workers.html", info=data.workers_data(current().manager))


def _pager(total: int, offset: int, shown: int) -> dict[str, Any]:
    """Newest first: 'newer' goes back toward offset 0, 'older' goes further."""
    return {"newer": max(0, offset - PAGE_SIZE) if offset > 0 else None,
            "older": offset + PAGE_SIZE if offset + shown < total else None,
            "first_row": offset + 1 if shown else 0, "last_row": offset + shown}


def install_filters(app: Flask) -> None:
    app.jinja_env.filters.update(seconds=_seconds, uptime=_uptime, size=_size, ms=_ms, short_id=short_id)


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}s"


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):,.1f} ms"


def _uptime(value: Any) -> str:
    secs = int(max(0.0, float(value or 0)))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _size(value: Any) -> str:
    n = float(value or 0)
    if n < 1024:
        return f"{n:.0f} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"
