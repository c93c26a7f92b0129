"""Drain: N `true` jobs enqueued first, then run by `queuectl start --count 1|2|4`.

jobs/s runs from the earliest attempt start to the latest attempt finish that queuectl recorded,
and is set beside the raw spawn limit at the same concurrency, measured just before it.
"""
from __future__ import annotations

from .common import NewStore, json_store, ratio, temp_dir
from .qctl import drain, enqueue_specs, job_ids, spec_lines
from .raw import limit_before


def drain_once(jobs: int, workers: int, new_store: NewStore = json_store) -> dict:
    """A fresh store, `jobs` pending `true` jobs, and one drain by `workers` workers."""
    with temp_dir(f"drain{workers}") as tmp, new_store(tmp, f"drain{workers}") as store:
        ids = job_ids(f"drain{workers}", jobs)
        how = enqueue_specs(store, spec_lines(ids), tmp)
        result = drain(store, ids, workers, tmp)
        result["enqueued_with"] = how
        return result


def measure(jobs: int, quick: bool, raw: dict | None = None, worker_counts: tuple[int, ...] = (1, 2, 4),
            new_store: NewStore = json_store) -> dict:
    """{"1": {...}, ...}: each with jobs_per_s, and its ratio to the raw limit at the same
    concurrency (see `raw.limit_before`)."""
    out = {}
    for workers in worker_counts:
        limit = limit_before(workers, quick, raw)
        result = drain_once(jobs, workers, new_store)
        result["raw_jobs_per_s"] = limit
        result["ratio_to_raw"] = ratio(result["jobs_per_s"], limit)
        out[str(workers)] = result
    return out
