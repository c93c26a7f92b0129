"""A store holding many completed jobs, built fast: one real job run by queuectl, then copies.

The real job is enqueued and run by queuectl's own Worker. The copies are written straight into
completed/ with an ids/<id> marker each, with the real job's file name, content and marker, and
only its id (and enqueue sequence, which the current layout puts in the file name and the marker)
changed; so the copies follow whatever layout this queuectl writes. Then everything is synced to
disk, and the real manager's `recount` rebuilds counts.json, as `queuectl start` would.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
FILE_MODE = 0o600
# Writers in parallel: more than the 2 cores, since each mostly waits on the file system.
WRITERS = 4


@dataclass(frozen=True)
class Template:
    """A real completed job as files: its name in completed/, its content and its id marker."""

    job_id: str
    seq: str
    name: str
    content: bytes
    marker: bytes

    def copy(self, new_id: str, new_seq: str) -> tuple[str, bytes, bytes]:
        def swap(data: str) -> str:
            return data.replace(self.job_id, new_id).replace(self.seq, new_seq)
        return (swap(self.name), swap(self.content.decode()).encode(),
                self.marker.decode().replace(self.seq, new_seq).encode())


def real_completed_job(store: Path) -> Template:
    """Enqueues `true` and runs it with queuectl's own Worker; returns its files."""
    from queuectl.core.queue import QueueManager
    from queuectl.core.storage import get_storage
    from queuectl.core.worker import Worker
    storage = get_storage(str(store))
    try:
        manager = QueueManager(storage)
        job = manager.enqueue("true")
        worker = Worker(manager, "bench-template")
        try:
            if not worker.run_once():
                raise RuntimeError("the template job was not claimed")
        finally:
            worker.unregister()
        if storage.get(job.id).state.value != "completed":
            raise RuntimeError("the template job did not complete")
    finally:
        storage.close()
    names = [n for n in os.listdir(store / "completed") if job.id in n]
    if len(names) != 1:
        raise RuntimeError(f"cannot find the template job's file in completed/: {names}")
    content = (store / "completed" / names[0]).read_bytes()
    return Template(job.id, str(json.loads(content)["seq"]), names[0], content,
                    (store / "ids" / job.id).read_bytes())


def copy_id(i: int) -> str:
    """A uuid-shaped id, cheaper than uuid4 and unique within the store."""
    return f"00000000-0000-4000-8000-{i:012x}"


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, FILE_FLAGS, FILE_MODE)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def _write_range(root: str, template: Template, start: int, stop: int) -> int:
    completed, ids = os.path.join(root, "completed"), os.path.join(root, "ids")
    base_seq = int(template.seq) + 1  # later than the template, earlier than any real enqueue after
    for i in range(start, stop):
        new_id = copy_id(i)
        name, content, marker = template.copy(new_id, str(base_seq + i))
        _write(os.path.join(completed, name), content)
        _write(os.path.join(ids, new_id), marker)
    return stop - start


def fill(store: Path, count: int) -> dict:
    """Adds `count` completed jobs (plus the real one) and recounts; returns timings."""
    from queuectl.core.storage import get_storage
    template = real_completed_job(store)
    t0 = time.perf_counter()
    bounds = [count * k // WRITERS for k in range(WRITERS + 1)]
    with ProcessPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(_write_range, str(store), template, a, b) for a, b in zip(bounds, bounds[1:])]
        written = sum(f.result() for f in futures)
    fill_s = time.perf_counter() - t0
    # Written back before anything is timed: a store at rest, not one whose files are still being
    # flushed (which would slow every fsync or syncfs on this file system for minutes).
    t0 = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t0
    storage = get_storage(str(store))
    t0 = time.perf_counter()
    try:
        recounted = storage.recount()
    finally:
        storage.close()
    recount_s = time.perf_counter() - t0
    return {"completed_jobs": written + 1, "fill_s": round(fill_s, 2), "sync_s": round(sync_s, 2),
            "recount_s": round(recount_s, 3), "counts": {state.value: n for state, n in recounted.items()}}
