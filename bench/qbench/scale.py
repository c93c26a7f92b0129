"""Scale: the same operations against an empty store and one holding many completed jobs.

status (in-process, as the CLI's `status` does it, and the CLI itself), one enqueue CLI call,
and the claim rate (a 1-worker drain of 200 jobs); each reported with the ratio scale/empty.
"""
from __future__ import annotations

from pathlib import Path

from .common import clean_env, median_ms, queuectl_exe, ratio, run_cli
from .qctl import drain, enqueue_specs, job_ids, spec_lines

CLAIM_JOBS = 200


def status_internal(store: Path) -> None:
    """What `queuectl status` does once its interpreter is up: counts and the live managers."""
    from queuectl.core.queue import QueueManager
    from queuectl.core.storage import get_storage
    storage = get_storage(str(store))
    try:
        manager = QueueManager(storage, str(store))
        manager.counts()
        manager.managers()
    finally:
        storage.close()


def claim_rate(store: Path, scratch: Path, tag: str) -> dict:
    """One worker draining CLAIM_JOBS `true` jobs added to the store."""
    ids = job_ids(f"claim-{tag}", CLAIM_JOBS)
    enqueue_specs(store, spec_lines(ids), scratch)
    return drain(store, ids, 1, scratch)


def operations(store: Path, scratch: Path, tag: str, repeat: int) -> dict:
    """Every scale-sensitive figure for one store (the enqueue calls come last: they add jobs)."""
    env = clean_env(store)
    return {
        "status_internal": median_ms(lambda: status_internal(store), max(20, repeat)),
        "status_cli": median_ms(lambda: run_cli([queuectl_exe(), "status"], env), repeat),
        "claim": claim_rate(store, scratch, tag),
        "enqueue_cli": median_ms(lambda: run_cli([queuectl_exe(), "enqueue", "true"], env), repeat),
    }


def compare(empty: dict, big: dict) -> dict:
    """Ratios scale/empty: above 1 means slower with the big store (for claim: a lower rate)."""
    return {
        "status_internal": ratio(big["status_internal"]["median_ms"], empty["status_internal"]["median_ms"]),
        "status_cli": ratio(big["status_cli"]["median_ms"], empty["status_cli"]["median_ms"]),
        "enqueue_cli": ratio(big["enqueue_cli"]["median_ms"], empty["enqueue_cli"]["median_ms"]),
        "claim_jobs_per_s": ratio(big["claim"]["jobs_per_s"], empty["claim"]["jobs_per_s"]),
    }


def measure(empty_store: Path, big_store: Path, scratch: Path, build: dict, repeat: int) -> dict:
    empty = operations(empty_store, scratch, "empty", repeat)
    big = operations(big_store, scratch, "big", repeat)
    return {"completed_jobs": build["completed_jobs"], "build": build, "empty": empty, "big": big,
            "ratio_big_to_empty": compare(empty, big)}
