"""Enqueue: one `queuectl enqueue true` CLI call beside the interpreter's floor, and the bulk path.

The floor is `python -c "import click"` with the same interpreter: what any Click CLI in this
venv pays before it does anything.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


def bulk(jobs: int, new_store: NewStore = json_store, floor: bool = True) -> dict:
    """jobs/s through `queuectl enqueue --file` (whole CLI call, start-up included), and unless
    `floor` is False, the file floor measured right after it on the same disk.

    After, not before: on ext4 without a journal the first few thousand files created after mass
    deletions pay for skipping the freed inodes (see `file_floor`), and a floor measured first
    took that cost off the bulk figure (2,400-2,600 files/s, then 11,000 jobs/s, three times).
    """
    if not bulk_available():
        return {"available": False, "reason": "this queuectl has no `enqueue --file`"}
    with temp_dir("bulk") as tmp, new_store(tmp, "bulk") as store:
        # Into a store that exists, as a user's is after its first command: into a new one the
        # enqueue checks every line before its helper starts (bad input must leave no store).
        run_cli([queuectl_exe(), "config", "set", "max_retries", "3"], clean_env(store))
        lines = spec_lines(job_ids("bulk", jobs))
        t0 = time.perf_counter()
        enqueue_specs(store, lines, tmp)
        seconds = time.perf_counter() - t0
        stored = pending_jobs(store)
        if stored != jobs:
            raise RuntimeError(f"bulk enqueue stored {stored} of {jobs} jobs")
        floor_rate = file_floor(tmp / "floor", jobs) if floor else None
    out = {"available": True, "jobs": jobs, "seconds": round(seconds, 3), "jobs_per_s": round(jobs / seconds, 1)}
    if floor_rate is not None:
        out.update(floor_files_per_s=floor_rate, ratio_to_floor=ratio(out["jobs_per_s"], floor_rate))
    return out


def file_floor(folder: Path, files: int, size: int = 420) -> float:
    """Files/s of the least a store of one file per job can do: create, write `size` bytes (a job
    file's size) and close each file in one folder, then one syncfs. On ext4 without a journal
    this moves with the disk's recent past (an inode freed in the last minute, or six, is skipped
    at a cost on each creation), and so does the bulk figure. The files stay until the run's
    clean-up: deleting them would slow what comes next."""
    from queuectl.core.utils.fs import sync_filesystem
    folder.mkdir()
    data = b"x" * size
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for i in range(files):
        fd = os.open(f"{folder}/{i}.json", flags, 0o600)
        os.write(fd, data)
        os.close(fd)
    sync_filesystem(str(folder))
    return round(files / (time.perf_counter() - t0), 1)
