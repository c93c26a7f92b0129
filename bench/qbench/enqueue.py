"""Enqueue: one `queuectl enqueue true` CLI call beside the interpreter's floor, and the bulk path.

The floor is `python -c "import click"` with the same interpreter: what any Click CLI in this
venv pays before it does anything.
"""
from __future__ import annotations

import subprocess
import sys
import time

from .common import clean_env, median_ms, queuectl_exe, ratio, run_cli, temp_dir
from .qctl import bulk_available, enqueue_specs, job_ids, spec_lines


def single(repeat: int) -> dict:
    """Median ms of one `queuectl enqueue true` into a fresh store, and of the floor."""
    with temp_dir("enqueue") as tmp:
        env = clean_env(tmp / "data")
        enqueue = median_ms(lambda: run_cli([queuectl_exe(), "enqueue", "true"], env), repeat)
        floor = median_ms(lambda: subprocess.run([sys.executable, "-c", "import click"], env=env,
                                                 check=True), repeat)
    return {"cli_ms": enqueue, "floor_ms": floor, "floor_command": f"{sys.executable} -c 'import click'",
            "ratio_to_floor": ratio(enqueue["median_ms"], floor["median_ms"])}


def bulk(jobs: int) -> dict:
    """jobs/s through `queuectl enqueue --file` (whole CLI call, start-up included)."""
    if not bulk_available():
        return {"available": False, "reason": "this queuectl has no `enqueue --file`"}
    with temp_dir("bulk") as tmp:
        lines = spec_lines(job_ids("bulk", jobs))
        t0 = time.perf_counter()
        enqueue_specs(tmp / "data", lines, tmp)
        seconds = time.perf_counter() - t0
        stored = len(list((tmp / "data" / "pending").iterdir()))
    if stored != jobs:
        raise RuntimeError(f"bulk enqueue stored {stored} of {jobs} jobs")
    return {"available": True, "jobs": jobs, "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds, 1)}
