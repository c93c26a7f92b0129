"""What the dashboard shows, computed from a QueueManager; no web framework in here.

Every document matches the CLI's `--json` one where the CLI has it (README, "Machine-readable
output"). `purge_one` is QueueManager.purge_dead under the API's name; everything goes through public
QueueManager and Storage methods.
"""
from __future__ import annotations

import os
import time
from typing import Any

from ..core.job import Job, JobState
from ..core.queue import QueueManager

# Bytes of an attempt's stdout or stderr shown on a page (the tail).
OUTPUT_TAIL = 64 * 1024
# Minutes in the throughput chart.
SERIES_MINUTES = 60
# The most running jobs the workers view lists.
RUNNING_SHOWN = 200


def status_data(manager: QueueManager) -> dict[str, Any]:
    """`queuectl status --json`: counts by state, their total, the running managers."""
    counts = manager.counts()
    return {"counts": {s.value: n for s, n in counts.items()}, "total": sum(counts.values()),
            "managers": managers_data(manager)}


def managers_data(manager: QueueManager) -> list[dict[str, Any]]:
    now = time.time()
    return [{"pid": m.pid, "workers": m.workers, "host": m.host,
             "uptime_seconds": round(now - m.started_at, 1)} for m in manager.managers()]


def workers_data(manager: QueueManager) -> dict[str, Any]:
    """The managers, and the job each busy worker runs (from the processing jobs' `worker`)."""
    total, running = manager.page(JobState.PROCESSING, RUNNING_SHOWN, 0)
    return {"managers": managers_data(manager), "running_total": total,
            "running": [{"worker": j.worker_id, "job": j.public_dict()} for j in running]}


def jobs_page(manager: QueueManager, state: JobState | None, limit: int, offset: int) -> dict[str, Any]:
    """`queuectl list --json`: the `limit` newest jobs after skipping `offset` (oldest first)."""
    total, jobs = manager.page(state, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "jobs": [j.public_dict() for j in jobs]}


def minute_series(minutes: dict[str, Any], now: float, count: int = SERIES_MINUTES) -> dict[str, Any]:
    """Per-minute completed and failed counts for the last `count` minutes, oldest first.

    `minutes` is the aggregate's {"<epoch minute>": [completed, failed attempts]}; minutes
    without an entry are zeros, malformed entries are skipped. The last point is the current
    (partial) minute; `start` is the epoch second at which the first point's minute begins.
    """
    last = int(now // 60)
    first = last - count + 1
    completed = [0] * count
    failed = [0] * count
    for key, value in minutes.items():
        try:
            minute = int(key)
            done, bad = int(value[0]), int(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if first <= minute <= last:
            completed[minute - first] += done
            failed[minute - first] += bad
    return {"start": first * 60, "step_seconds": 60, "completed": completed, "failed": failed}


def metrics_series(manager: QueueManager) -> dict[str, Any]:
    """The throughput series for the last hour, from the running aggregates."""
    return minute_series(manager.storage.metrics().get("minutes", {}), time.time())


def read_tail(path: str, limit: int = OUTPUT_TAIL) -> dict[str, Any]:
    """The last `limit` bytes of an output file as text: {"text", "size", "truncated", "exists"}."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except FileNotFoundError:
        return {"text": "", "size": 0, "truncated": False, "exists": False}
    truncated = size > limit
    if truncated:  # do not start inside a UTF-8 sequence
        cut = 0
        while cut < min(3, len(data)) and (data[cut] & 0xC0) == 0x80:
            cut += 1
        data = data[cut:]
    return {"text": data.decode("utf-8", errors="replace"), "size": size, "truncated": truncated,
            "exists": True}


def output_data(manager: QueueManager, job: Job, attempt: int | None, stream: str) -> dict[str, Any]:
    """One stream of one attempt (the latest by default), its last 64 KiB."""
    number, out, err = manager.output(job, attempt)
    tail = read_tail(out if stream == "stdout" else err)
    return {"id": job.id, "attempt": number, "stream": stream, **tail}


def attempt_numbers(job: Job) -> list[int]:
    """Attempts whose output may be kept, newest first."""
    return list(range(job.attempts, 0, -1))


def purge_one(manager: QueueManager, ref: str) -> Job:
    """Deletes one dead job (id or unique prefix) with its output; returns it as it was."""
    return manager.purge_dead(ref)
