"""Scale: the same operations against an empty store and one holding many completed jobs.

status (in-process, as the CLI's `status` does it, and the CLI itself), one enqueue CLI call,
and the claim rate (1-worker drains of 200 jobs, CLAIM_PASSES on each store, alternated); each
reported with the ratio scale/empty.
"""
from __future__ import annotations

from pathlib import Path

from .common import clean_env, median_ms, queuectl_exe, ratio, run_cli
from .qctl import drain, enqueue_specs, job_ids, spec_lines

CLAIM_JOBS = 200
# A 200-job drain lasts a third of a second: one of them moved by a fifth between two runs on
# the same store, more than the effect measured. So each store drains three times, the two
# stores in turn, and the median counts.
CLAIM_PASSES = 3


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


def operations(store: Path, repeat: int) -> dict:
    """The status figures of one store."""
    env = clean_env(store)
    return {
        "status_internal": median_ms(lambda: status_internal(store), max(20, repeat)),
        "status_cli": median_ms(lambda: run_cli([queuectl_exe(), "status"], env), repeat),
    }


def enqueue_ms(store: Path, repeat: int) -> dict:
    env = clean_env(store)
    return median_ms(lambda: run_cli([queuectl_exe(), "enqueue", "true"], env), repeat)


def claim_passes(stores: dict[str, Path], scratch: Path) -> dict[str, dict]:
    """CLAIM_PASSES drains on each store, the stores in turn (the order flips each pass); per
    store the pass of median rate, with every pass's rate beside it."""
    passes: dict[str, list[dict]] = {tag: [] for tag in stores}
    for n in range(CLAIM_PASSES):
        for tag in (list(stores) if n % 2 == 0 else list(reversed(stores))):
            passes[tag].append(claim_rate(stores[tag], scratch, f"{tag}{n}"))
    out = {}
    for tag, runs in passes.items():
        ranked = sorted(runs, key=lambda r: r["jobs_per_s"])
        out[tag] = dict(ranked[len(ranked) // 2], passes_jobs_per_s=[r["jobs_per_s"] for r in runs])
    return out


def compare(empty: dict, big: dict) -> dict:
    """Ratios scale/empty: above 1 means slower with the big store (for claim: a lower rate)."""
    return {
        "status_internal": ratio(big["status_internal"]["median_ms"], empty["status_internal"]["median_ms"]),
        "status_cli": ratio(big["status_cli"]["median_ms"], empty["status_cli"]["median_ms"]),
        "enqueue_cli": ratio(big["enqueue_cli"]["median_ms"], empty["enqueue_cli"]["median_ms"]),
        "claim_jobs_per_s": ratio(big["claim"]["jobs_per_s"], empty["claim"]["jobs_per_s"]),
    }


def measure(empty_store: Path, big_store: Path, scratch: Path, build: dict, repeat: int) -> dict:
    empty = operations(empty_store, repeat)
    big = operations(big_store, repeat)
    claims = claim_passes({"empty": empty_store, "big": big_store}, scratch)
    empty["claim"], big["claim"] = claims["empty"], claims["big"]
    # the enqueue calls last: they add jobs
    empty["enqueue_cli"] = enqueue_ms(empty_store, repeat)
    big["enqueue_cli"] = enqueue_ms(big_store, repeat)
    return {"completed_jobs": build["completed_jobs"], "build": build, "empty": empty, "big": big,
            "ratio_big_to_empty": compare(empty, big)}
