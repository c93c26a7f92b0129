"""Memory: `queuectl start --count 4` left idle, the start process and all its children summed.

Two figures per store: the peak of the sampled sum of VmRSS, and the sum of each process's own
peak (VmHWM, read at the end), which also catches a start-up peak between samples (such as the
recount a big store costs before the workers are spawned).
"""
from __future__ import annotations

import time
from pathlib import Path

from .common import wait_until
from .procs import descendants, queuectl_workers, status_kb
from .qctl import counts, running_workers

WORKERS = 4
SAMPLE_EVERY = 0.1


def tree(pid: int) -> list[int]:
    return [pid] + descendants(pid)


def sample(pid: int, idle_s: float) -> dict:
    """Samples the tree's summed RSS for `idle_s` seconds; VmHWM summed at the end."""
    peak_rss = 0
    hwm: dict[int, int] = {}
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        pids = tree(pid)
        peak_rss = max(peak_rss, sum(status_kb(p, "VmRSS") for p in pids))
        for p in pids:
            hwm[p] = max(hwm.get(p, 0), status_kb(p, "VmHWM"))
        time.sleep(SAMPLE_EVERY)
    return {"processes": len(hwm), "peak_rss_mb": round(peak_rss / 1024, 1),
            "sum_hwm_mb": round(sum(hwm.values()) / 1024, 1)}


def idle_tree(store: Path, scratch: Path, idle_s: float) -> dict:
    """Starts 4 workers on `store`, waits until all four run, then samples for `idle_s` seconds."""
    waiting = sum(n for state, n in counts(store).items() if state in ("pending", "failed", "processing"))
    if waiting:
        raise RuntimeError(f"the store has {waiting} jobs to run: the workers would not be idle")
    with running_workers(store, WORKERS, scratch) as proc:
        launched = time.monotonic()
        wait_until(lambda: len(queuectl_workers(proc.pid)) == WORKERS, 120, what="4 workers")
        workers_up = time.monotonic() - launched
        result = sample(proc.pid, idle_s)
    result["workers_up_s"] = round(workers_up, 2)
    return result


def measure(empty_store: Path, big_store: Path | None, scratch: Path, idle_s: float) -> dict:
    out = {"workers": WORKERS, "idle_s": idle_s, "empty": idle_tree(empty_store, scratch, idle_s)}
    if big_store is not None:
        out["big"] = idle_tree(big_store, scratch, idle_s)
    return out
