"""Pickup latency: one idle worker, one `true` job at a time; latency = attempt start - created_at.

Jobs are enqueued through the Python API (no CLI start-up in the way). After each job completes
the next one waits a random part of the poll interval, so enqueues do not fall in step with the
worker's polling.
"""
from __future__ import annotations

import random
import statistics
import time

from .common import NewStore, json_store, parse_iso, percentile, temp_dir, wait_until
from .procs import queuectl_workers
from .qctl import running_workers, wait_completed


def one_job(manager) -> float:
    """Enqueues `true`, waits for it to complete, returns its pickup latency in ms."""
    job = manager.enqueue("true")
    done = wait_completed(manager.storage, job.id, timeout=30)
    return (parse_iso(done["history"][0]["started_at"]) - parse_iso(done["created_at"])) * 1000


def measure(samples: int, new_store: NewStore = json_store) -> dict:
    from queuectl.core.queue import QueueManager
    from queuectl.core.storage import get_storage
    with temp_dir("pickup") as tmp, new_store(tmp, "pickup") as store:
        storage = get_storage(str(store))
        manager = QueueManager(storage)
        poll = manager.config.poll_interval
        try:
            with running_workers(store, 1, tmp) as proc:
                wait_until(lambda: len(queuectl_workers(proc.pid)) == 1, 30, what="the worker")
                time.sleep(0.5)  # let it import, register and go idle
                latencies = []
                for _ in range(samples):
                    time.sleep(random.uniform(0, poll))
                    latencies.append(one_job(manager))
        finally:
            storage.close()
    return {"samples": samples, "poll_interval_s": poll,
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "mean_ms": round(statistics.mean(latencies), 1), "max_ms": round(max(latencies), 1)}
