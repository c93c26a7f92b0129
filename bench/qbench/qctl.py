"""Driving the real queuectl: enqueue jobs, run `queuectl start` in the background, read results.

Throughput is computed from what queuectl recorded (each attempt's started_at/finished_at in the
completed job, read through queuectl's storage API), from the earliest attempt start to the latest
attempt finish, so process start-up and shutdown are not counted.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

from .common import Store, clean_env, parse_iso, queuectl_exe, run_cli, wait_until
from .procs import background, wait_exit

# A drain that is this much slower than 20 jobs/s is treated as stuck.
MIN_RATE = 20.0


@functools.cache
def bulk_available() -> bool:
    """Whether this queuectl has the bulk path `queuectl enqueue --file FILE`."""
    p = subprocess.run([queuectl_exe(), "enqueue", "--help"], capture_output=True, text=True,
                       env=clean_env(), timeout=60)
    return "--file" in p.stdout


def spec_lines(ids: Sequence[str], command: str = "true") -> list[str]:
    return [json.dumps({"id": job_id, "command": command}) for job_id in ids]


def enqueue_specs(store: Store, lines: Sequence[str], scratch: Path) -> str:
    """Stores many jobs at once: the CLI bulk path when there is one, else the Python API."""
    if bulk_available():
        spec_file = scratch / f"jobs-{time.time_ns()}.jsonl"
        spec_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            run_cli([queuectl_exe(), "enqueue", "--file", str(spec_file)], clean_env(store), timeout=600)
        finally:
            spec_file.unlink()
        return "cli --file"
    from queuectl.core.queue import QueueManager
    from queuectl.core.storage import get_storage
    storage = get_storage(str(store))
    try:
        QueueManager(storage).enqueue_many(list(lines))
    finally:
        storage.close()
    return "python enqueue_many"


def job_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(n)]


def counts(store: Store) -> dict[str, int]:
    """Per-state counts as `queuectl status` reads them (the kept counts file)."""
    from queuectl.core.storage import get_storage
    storage = get_storage(str(store))
    try:
        return {state.value: n for state, n in storage.counts().items()}
    finally:
        storage.close()


def pending_jobs(store: Store) -> int:
    """Pending jobs stored: the JSON store's pending folder listed, Redis's counters read."""
    if isinstance(store, Path):
        return sum(1 for _ in (store / "pending").iterdir())
    return counts(store)["pending"]


def completed_job(storage, job_id: str) -> dict | None:
    """A job as queuectl stored it, once it is completed; None before (or if it is not)."""
    job = storage.get(job_id)
    return job.to_dict() if job is not None and job.state.value == "completed" else None


def wait_completed(storage, job_id: str, timeout: float, interval: float = 0.002) -> dict:
    """Polls until the job is completed; returns it as stored."""
    deadline = time.monotonic() + timeout
    while True:
        done = completed_job(storage, job_id)
        if done is not None:
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not complete within {timeout:.0f}s")
        time.sleep(interval)


def attempt_window(store: Store, ids: Sequence[str]) -> tuple[float, float]:
    """(earliest attempt start, latest attempt finish) over these completed jobs, epoch seconds."""
    from queuectl.core.storage import get_storage
    storage = get_storage(str(store))
    starts, ends = [], []
    try:
        for job_id in ids:
            job = completed_job(storage, job_id)
            if job is None:
                raise RuntimeError(f"job {job_id} is not completed")
            for attempt in job["history"]:
                starts.append(parse_iso(attempt["started_at"]))
                ends.append(parse_iso(attempt["finished_at"]))
    finally:
        storage.close()
    return min(starts), max(ends)


def stop_gracefully(proc: subprocess.Popen) -> None:
    """One SIGTERM, as `queuectl stop` or Ctrl+C: workers finish their job and exit (cheaper than
    starting a `queuectl stop` process)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    wait_exit(proc, 30)


@contextlib.contextmanager
def running_workers(store: Store, count: int, log_dir: Path,
                    graceful: bool = True) -> Iterator[subprocess.Popen]:
    """`queuectl start --count N` in the background for the block; always stopped after it.

    Graceful: one SIGTERM first, and a wait for the exit. Otherwise (or if that fails) signals end
    it: TERM, a second TERM (queuectl's forced stop, which ends running commands), then KILL.
    """
    log = log_dir / f"start-{count}-{time.time_ns()}.log"
    args = [queuectl_exe(), "start", "--count", str(count)]
    stop = stop_gracefully if graceful else None
    with background(args, clean_env(store), log, stop=stop) as proc:
        yield proc


def wait_all_completed(store: Store, target: int, proc: subprocess.Popen, timeout: float) -> None:
    """Waits until `target` jobs are completed; fails early if a job fails or `start` died."""
    def done() -> bool:
        c = counts(store)
        if c.get("failed") or c.get("dead"):
            raise RuntimeError(f"jobs failed during the benchmark: {c}")
        if proc.poll() is not None:
            raise RuntimeError(f"queuectl start exited early with code {proc.returncode}")
        return c["completed"] >= target
    # Not more often: each look opens the store (some ms of CPU), and the rate comes from the
    # recorded times anyway. At 20 ms the polling took a few percent of the two cores it measures.
    wait_until(done, timeout, interval=0.25, what=f"{target} completed jobs")


def drain(store: Store, ids: Sequence[str], workers: int, log_dir: Path) -> dict:
    """Runs `start --count workers` until these pending jobs are completed; rate from timestamps."""
    target = counts(store)["completed"] + len(ids)
    launched = time.time()
    with running_workers(store, workers, log_dir) as proc:
        wait_all_completed(store, target, proc, timeout=60 + len(ids) / MIN_RATE)
    first, last = attempt_window(store, ids)
    window = max(last - first, 1e-3)
    return {"jobs": len(ids), "workers": workers, "jobs_per_s": round(len(ids) / window, 1),
            "window_s": round(window, 3), "startup_s": round(first - launched, 3)}
