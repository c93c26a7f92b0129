"""Recovery: SIGKILL the worker running a `sleep 5` job; time until the job's attempt 2 starts.

What is measured is queuectl's whole path: the supervisor noticing the dead worker, recovering
the orphaned job (ending its command first), respawning a worker, and that worker claiming it.
"""
from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

from .common import parse_iso, temp_dir, wait_until
from .procs import queuectl_workers
from .qctl import running_workers

JOB_COMMAND = "sleep 5"


def is_processing(storage, job_id: str) -> bool:
    job = storage.get(job_id)
    return job is not None and job.state.value == "processing"


def attempt_two_started(storage, job_id: str) -> float | None:
    """Epoch seconds when attempt 2 started, or None while it has not."""
    job = storage.get(job_id)
    if job is None or job.attempts < 2 or not job.started_at:
        return None
    return parse_iso(job.started_at)


def wait_attempt_two(storage, job_id: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = attempt_two_started(storage, job_id)
        if started is not None:
            return started
        time.sleep(0.02)
    raise TimeoutError(f"attempt 2 of job {job_id} did not start within {timeout:.0f}s")


def once(tmp: Path) -> dict:
    from queuectl.core.queue import QueueManager
    from queuectl.core.storage import get_storage
    store = tmp / "data"
    storage = get_storage(str(store))
    try:
        with running_workers(store, 1, tmp, graceful=False) as proc:
            wait_until(lambda: len(queuectl_workers(proc.pid)) == 1, 30, what="the worker")
            job = QueueManager(storage).enqueue(JOB_COMMAND)
            wait_until(lambda: is_processing(storage, job.id), 30, what="the job to be processing")
            time.sleep(0.2)  # well inside the command, not at its claim
            victim = queuectl_workers(proc.pid)[0]
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            restarted = wait_attempt_two(storage, job.id, timeout=60)
    finally:
        storage.close()
    return {"seconds": round(restarted - killed, 3), "worker_pid_killed": victim}


def measure(runs: int) -> dict:
    results = []
    for i in range(runs):
        with temp_dir(f"recovery{i}") as tmp:
            results.append(once(tmp))
    seconds = [r["seconds"] for r in results]
    return {"runs": runs, "seconds": round(statistics.median(seconds), 3), "all_seconds": seconds,
            "command": JOB_COMMAND}
