"""Running aggregates of what jobs did, so `metrics` never reads every job ever stored.

A backend keeps one aggregate document beside its counts and passes every state change through
`apply` in the same atomic step. Everything here is pure: a dict in, the same dict changed.
"""
from __future__ import annotations

import bisect
import math
from datetime import datetime
from typing import Any

from .job import Job, JobState

# Histogram bounds in milliseconds (Prometheus-style "le" buckets; the last is +Inf).
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 3600000)
# Per-minute counters are kept this long: enough for "last hour" figures.
KEEP_MINUTES = 60


def empty() -> dict[str, Any]:
    return {
        "attempts_total": 0,       # attempts started
        "completed_total": 0,      # jobs that ended completed
        "failed_attempts_total": 0,  # attempts that failed (each retry counts)
        "dead_total": 0,           # jobs that ended in the DLQ
        "minutes": {},             # epoch minute -> [completed, failed attempts]
        "run_ms": _histogram(),    # attempt run time
        "wait_ms": _histogram(),   # from due (enqueue or retry time) to start
        "exit_codes": {},          # exit code of failed attempts -> count
    }


def _histogram() -> dict[str, Any]:
    return {"buckets": [0] * (len(BUCKETS_MS) + 1), "count": 0, "sum": 0.0, "max": 0.0}


def observe(hist: dict[str, Any], value_ms: float) -> None:
    value_ms = max(0.0, value_ms)
    hist["buckets"][bisect.bisect_left(BUCKETS_MS, value_ms)] += 1
    hist["count"] += 1
    hist["sum"] += value_ms
    hist["max"] = max(hist["max"], value_ms)


def quantile(hist: dict[str, Any], q: float) -> float | None:
    """The q-quantile in ms, interpolated inside its bucket; None with no observations."""
    total = hist["count"]
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist["buckets"]):
        if n and seen + n >= rank:
            low = BUCKETS_MS[i - 1] if i else 0.0
            high = BUCKETS_MS[i] if i < len(BUCKETS_MS) else hist["max"]
            return min(hist["max"], low + (high - low) * max(0.0, rank - seen) / n)
        seen += n
    return hist["max"]


def apply(agg: dict[str, Any], old: Job, new: Job, now: float) -> None:
    """Folds one state change into the aggregates."""
    if old.state is JobState.PROCESSING and new.state is JobState.PROCESSING:
        if new.attempts == old.attempts + 1 and new.started_at:
            agg["attempts_total"] += 1
            started = _epoch(new.started_at)
            if started is not None:
                observe(agg["wait_ms"], (started - old.due_at) * 1000)
        return
    if old.state is not JobState.PROCESSING or not new.history:
        return
    last = new.history[-1]
    if last.get("counted") is False:
        return  # a forced stop: the attempt is given back, not judged
    minute = str(int(now // 60))
    bucket = agg["minutes"].setdefault(minute, [0, 0])
    if new.state is JobState.COMPLETED:
        agg["completed_total"] += 1
        bucket[0] += 1
    else:
        agg["failed_attempts_total"] += 1
        bucket[1] += 1
        code = last.get("exit_code")
        key = "timeout" if last.get("timed_out") else ("none" if code is None else str(code))
        agg["exit_codes"][key] = agg["exit_codes"].get(key, 0) + 1
        if new.state is JobState.DEAD:
            agg["dead_total"] += 1
    if last.get("duration") is not None:
        observe(agg["run_ms"], float(last["duration"]) * 1000)
    cutoff = int(now // 60) - KEEP_MINUTES
    for key in [k for k in agg["minutes"] if int(k) < cutoff]:
        del agg["minutes"][key]


def window(agg: dict[str, Any], seconds: int, now: float) -> tuple[int, int]:
    """(completed, failed attempts) in the last `seconds` (whole minutes, the current one included)."""
    first = int(now // 60) - max(1, math.ceil(seconds / 60)) + 1
    done = failed = 0
    for key, (c, f) in agg["minutes"].items():
        if int(key) >= first:
            done, failed = done + c, failed + f
    return done, failed


def merge_defaults(agg: Any) -> dict[str, Any]:
    """An aggregate read from storage, with any missing part filled in (older or damaged files)."""
    base = empty()
    if isinstance(agg, dict):
        for key, value in agg.items():
            if key in base and type(value) is type(base[key]):
                base[key] = value
    return base


def _epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
