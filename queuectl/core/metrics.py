"""Running aggregates of what jobs did, so `metrics` never reads every job ever stored.

A backend keeps one aggregate document beside its counts and passes every state change through
`apply` in the same atomic step. Everything here is pure: a dict in, the same dict changed.
"""
from __future__ import annotations

import bisect
from typing import Any

from .job import COMPLETED, DEAD, PROCESSING, Job

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
        "wait_ms": _histogram(),   # from due time (or enqueue, if later) to start
        "exit_codes": {},          # exit code of failed attempts -> count
    }


def _histogram() -> dict[str, Any]:
    return {"buckets": [0] * (len(BUCKETS_MS) + 1), "count": 0, "sum": 0.0, "max": 0.0}


def observe(hist: dict[str, Any], value_ms: float) -> None:
    if not value_ms > 0.0:  # negative, or NaN from a damaged due time
        value_ms = 0.0
    hist["buckets"][bisect.bisect_left(BUCKETS_MS, value_ms)] += 1
    hist["count"] += 1
    hist["sum"] += value_ms
    if value_ms > hist["max"]:
        hist["max"] = value_ms


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
    if old.state is not PROCESSING:
        if new.state is DEAD and old.state is not DEAD:  # cancelled while waiting, or its dependency died
            agg["dead_total"] += 1
        return
    state = new.state
    if state is PROCESSING:
        if new.attempts == old.attempts + 1 and new.started_at:
            agg["attempts_total"] += 1
            # `now` is when the start was recorded, microseconds after the stamp in started_at,
            # which would take a parse a job to read back. A job enqueued with a due time
            # already past waits from its enqueue (`seq`, in ns), not from that time.
            observe(agg["wait_ms"], (now - max(old.due_at, old.seq / 1e9)) * 1000)
        return
    history = new.history
    if not history:
        return
    last = history[-1]
    if last.get("counted") is False:
        return  # a forced stop: the attempt is given back, not judged
    minutes = agg["minutes"]
    minute = int(now // 60)
    bucket = minutes.get(str(minute))
    if bucket is None:
        # Minutes past the window go when a new one begins: once a minute, not once a job (a
        # pass over the hour's sixty keys was 5 us a job).
        for key in [k for k in minutes if int(k) < minute - KEEP_MINUTES]:
            del minutes[key]
        bucket = minutes[str(minute)] = [0, 0]
    if state is COMPLETED:
        agg["completed_total"] += 1
        bucket[0] += 1
    else:
        agg["failed_attempts_total"] += 1
        bucket[1] += 1
        code = last.get("exit_code")
        key = "timeout" if last.get("timed_out") else ("none" if code is None else str(code))
        agg["exit_codes"][key] = agg["exit_codes"].get(key, 0) + 1
        if state is DEAD:
            agg["dead_total"] += 1
    duration = last.get("duration")
    if duration is not None:
        observe(agg["run_ms"], float(duration) * 1000)


def window(agg: dict[str, Any], seconds: int, now: float) -> tuple[float, float]:
    """(completed, failed attempts) in the last `seconds`, from per-minute counters.

    The oldest minute that the window only partly covers is weighted by the part it covers.
    """
    start = now - seconds
    done = failed = 0.0
    for key, (c, f) in agg["minutes"].items():
        m0 = int(key) * 60
        overlap = min(m0 + 60, now) - max(m0, start)
        if overlap <= 0:
            continue
        span = min(60.0, now - m0)  # the current minute has only lasted this long
        weight = 1.0 if m0 >= start else overlap / span if span > 0 else 0.0
        done, failed = done + c * weight, failed + f * weight
    return done, failed


def summary(agg: dict[str, Any], counts: dict[str, int], oldest_pending: float | None,
            managers: int, workers: int, now: float) -> dict[str, Any]:
    """The `metrics` report: every figure from the aggregates, none from reading jobs."""
    done_1m, failed_1m = window(agg, 60, now)
    done_1h, failed_1h = window(agg, 3600, now)
    done_5m, _ = window(agg, 300, now)
    judged = agg["completed_total"] + agg["failed_attempts_total"]

    def hist(h: dict[str, Any]) -> dict[str, Any]:
        return {"count": h["count"], "p50": _round(quantile(h, 0.5)), "p95": _round(quantile(h, 0.95)),
                "max": _round(h["max"]) if h["count"] else None}

    return {
        "jobs": dict(counts),
        "completed_last_minute": round(done_1m), "failed_last_minute": round(failed_1m),
        "completed_last_hour": round(done_1h), "failed_last_hour": round(failed_1h),
        "throughput_per_second": round(done_5m / 300, 3),
        "success_rate": round(agg["completed_total"] / judged, 4) if judged else None,
        "run_time_ms": hist(agg["run_ms"]),
        "queue_wait_ms": hist(agg["wait_ms"]),
        "failures_by_exit_code": dict(sorted(agg["exit_codes"].items())),
        "oldest_pending_age_seconds": round(now - oldest_pending, 3) if oldest_pending else None,
        "managers": managers,
        "workers": workers,
        "totals": {k: agg[k] for k in ("attempts_total", "completed_total", "failed_attempts_total", "dead_total")},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def prometheus(agg: dict[str, Any], report: dict[str, Any]) -> str:
    """The Prometheus text exposition format (for a textfile collector or a scrape)."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_num(value)}" for labels, value in samples)

    metric("queuectl_jobs", "gauge", "Jobs by state.",
           [(f'{{state="{state}"}}', n) for state, n in report["jobs"].items()])
    metric("queuectl_attempts_started_total", "counter", "Attempts started.", [("", agg["attempts_total"])])
    metric("queuectl_jobs_completed_total", "counter", "Jobs completed.", [("", agg["completed_total"])])
    metric("queuectl_attempts_failed_total", "counter", "Attempts that failed (each retry counts).",
           [("", agg["failed_attempts_total"])])
    metric("queuectl_jobs_dead_total", "counter", "Jobs moved to the dead letter queue.", [("", agg["dead_total"])])
    metric("queuectl_attempt_failures_total", "counter", "Failed attempts by exit code.",
           [(f'{{exit_code="{code}"}}', n) for code, n in sorted(agg["exit_codes"].items())])
    for name, key, text in (("queuectl_job_run_seconds", "run_ms", "Attempt run time."),
                            ("queuectl_job_wait_seconds", "wait_ms", "Time from due to start.")):
        h = agg[key]
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} histogram")
        running = 0
        for bound, n in zip((*BUCKETS_MS, None), h["buckets"]):
            running += n
            le = "+Inf" if bound is None else _num(bound / 1000)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out.append(f"{name}_sum {_num(h['sum'] / 1000)}")
        out.append(f"{name}_count {h['count']}")
    age = report["oldest_pending_age_seconds"]
    metric("queuectl_oldest_pending_age_seconds", "gauge", "Age of the oldest pending job (0 if none).",
           [("", age or 0)])
    metric("queuectl_managers", "gauge", "Running worker managers.", [("", report["managers"])])
    metric("queuectl_workers", "gauge", "Running worker processes.", [("", report["workers"])])
    return "\n".join(out) + "\n"


def _num(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def merge_defaults(agg: Any) -> dict[str, Any]:
    """An aggregate read from storage, with any missing part filled in (older or damaged files)."""
    base = empty()
    if isinstance(agg, dict):
        for key, value in agg.items():
            if key in base and type(value) is type(base[key]):
                base[key] = value
    return base
