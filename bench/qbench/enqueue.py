"""Enqueue: one `queuectl enqueue true` CLI call beside the interpreter's floor, and the bulk path.

The floor is `python -c "import click"` with the same interpreter: what any Click CLI in this
venv pays before it does anything.
"""
from __future__ import annotations

import subprocess
import sys
import time

from .common import NewStore, clean_env, json_store, median_ms, paired_median_ms, queuectl_exe, ratio, run_cli, temp_dir
from .qctl import bulk_available, enqueue_specs, job_ids, pending_jobs, spec_lines


def single(repeat: int, new_store: NewStore = json_store, floor: bool = True) -> dict:
    """Median ms of one `queuectl enqueue true` into a fresh store, and of the floor (unless
    `floor` is False: it does not depend on the store)."""
    with temp_dir("enqueue") as tmp, new_store(tmp, "enqueue") as store:
        env = clean_env(store)
        def call() -> None:
            run_cli([queuectl_exe(), "enqueue", "true"], env)

        if not floor:
            return {"cli_ms": median_ms(call, repeat)}
        enqueue, floor_ms = paired_median_ms(
            [call, lambda: subprocess.run([sys.executable, "-c", "import click"], env=env, check=True)], repeat)
    return {"cli_ms": enqueue, "floor_ms": floor_ms, "floor_command": f"{sys.executable} -c 'import click'",
            "ratio_to_floor": ratio(enqueue["median_ms"], floor_ms["median_ms"])}


def bulk(jobs: int, new_store: NewStore = json_store) -> dict:
    """jobs/s through `queuectl enqueue --file` (whole CLI call, start-up included)."""
    if not bulk_available():
        return {"available": False, "reason": "this queuectl has no `enqueue --file`"}
    with temp_dir("bulk") as tmp, new_store(tmp, "bulk") as store:
        lines = spec_lines(job_ids("bulk", jobs))
        t0 = time.perf_counter()
        enqueue_specs(store, lines, tmp)
        seconds = time.perf_counter() - t0
        stored = pending_jobs(store)
    if stored != jobs:
        raise RuntimeError(f"bulk enqueue stored {stored} of {jobs} jobs")
    return {"available": True, "jobs": jobs, "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds, 1)}
