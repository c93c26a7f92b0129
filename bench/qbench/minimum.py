"""The durable minimum: a loop that does only what storing each job as a JSON file requires.

Per job: take the next pending file by rename, read and parse it, note the attempt in a lock file,
start `sh -c true` as queuectl starts commands (the same function) and note its process, wait for
it, write the result over a spare file (a finished job's old file, kept as queuectl keeps it: see
`JsonStorage._spare_file`) and note it; per 30 results one syncfs, then each result renamed into
completed/ and the old copy renamed into tmp/ as a spare for a later result. No counts, metrics,
log lines, history, validation, priorities, timeouts or output files.

Until 2026-12-07 the loop wrote each result to a new file and removed the old copy: on ext4
without a journal, a new inode costs a scan of those freed in the last minute, so the loop paid
for what queuectl avoids, and queuectl's drain could beat its "minimum".

It shows where the limit of this storage design lies on the machine at hand, for a worker that
takes one job after another: its rate against the raw limit at the same concurrency is the best
such a worker could do, and queuectl's drain against it is what the rest of queuectl's
bookkeeping costs. A queuectl worker writes a result while the next command's shell starts (see
`Storage.hold_result`), which this loop does not: with an idle core to overlap with (1 worker
on 2 cores) it drains above the loop; with none (2 workers on 2 cores) the loop stays the
ceiling. It runs on a store
that `queuectl enqueue --file` filled, and leaves that store unusable (it is thrown away).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .common import json_store, ratio, temp_dir
from .qctl import enqueue_specs, job_ids, spec_lines
from .raw import limit_before

BATCH = 30

# Each looping process waits for a common start time, takes jobs until none is left, and reports
# how many it ran and when its first started and its last ended.
LOOP = r"""
import ctypes, json, os, select, subprocess, sys, time
from queuectl.core.utils.proc import exit_fd, spawn_shell
root, me, start, batch_size = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
note_fd = os.open(os.path.join(root, "owners", f"{me}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
def note(text):
    os.lseek(note_fd, 0, os.SEEK_SET)
    os.write(note_fd, text.encode().ljust(1024))
def stamp():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)
spares, cooling, spare_n = [], [], 0
def commit(batch):
    global spare_n
    fd = os.open(root, os.O_RDONLY)
    libc.syncfs(fd)
    os.close(fd)
    spares.extend(cooling)  # renamed durably by now: may be overwritten
    cooling.clear()
    for tmp, src, dst in batch:
        os.rename(tmp, dst)
        spare_n += 1
        spare = os.path.join(root, "tmp", f".{me}.{spare_n}.spare")
        os.rename(src, spare)
        cooling.append(spare)
    note('{"job": null, "done": {}}')
time.sleep(max(0.0, start - time.time()))
names = sorted(os.listdir(os.path.join(root, "pending")), reverse=True)
batch, done, first, last, n = [], [], None, None, 0
while names:
    name = names.pop()
    job_id = name.split("_", 3)[3][:-len(".json")]
    path = os.path.join(root, "processing", f"{me}__{job_id}.json")
    try:
        os.rename(os.path.join(root, "pending", name), path)
    except FileNotFoundError:
        continue  # the other loop took it
    with open(path, "rb") as f:
        job = json.loads(f.read())
    job["attempts"] += 1
    job["started_at"] = started = stamp()
    first = first or time.time()
    note(json.dumps({"job": job_id, "attempt": job["attempts"], "started_at": started}))
    proc = spawn_shell(job["command"], subprocess.PIPE, subprocess.PIPE)
    note(json.dumps({"job": job_id, "attempt": job["attempts"], "started_at": started, "pgid": proc.pid}))
    pidfd = exit_fd(proc.pid)
    pipes = [proc.stdout.fileno(), proc.stderr.fileno()]
    while True:
        ready, _, _ = select.select(pipes + ([pidfd] if pidfd is not None else []), [], [],
                                    0.05 if pidfd is not None or pipes else 0.001)
        for fd in ready:
            if fd in pipes and not os.read(fd, 65536):
                pipes.remove(fd)
                os.close(fd)
        if proc.poll() is not None:
            break
    for fd in pipes + ([pidfd] if pidfd is not None else []):
        os.close(fd)
    last = time.time()
    job.update(state="completed", finished_at=stamp(), exit_code=proc.returncode, worker_id=me)
    tmp = spares.pop() if spares else os.path.join(root, "tmp", f".{me}.{n}.result")
    data = json.dumps(job, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)
    os.ftruncate(fd, len(data))
    os.close(fd)
    batch.append((tmp, path, os.path.join(root, "completed", f"{job['seq']}_{job_id}.json")))
    done.append(job_id)
    note(json.dumps({"job": None, "done": done}))
    n += 1
    if len(batch) >= batch_size:
        commit(batch)
        batch, done = [], []
if batch:
    commit(batch)
print(json.dumps({"jobs": n, "first": first, "last": last}))
"""


def loop_rate(store: Path, processes: int) -> dict:
    """Runs `processes` loops on the store until it is drained; jobs/s from first start to last end."""
    start = time.time() + 0.5  # time for every loop to start
    procs = [subprocess.Popen([sys.executable, "-c", LOOP, str(store), f"minimum-{i}", str(start), str(BATCH)],
                              stdout=subprocess.PIPE, text=True) for i in range(processes)]
    try:
        outs = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ran = [o for o in outs if o["jobs"]]
    jobs = sum(o["jobs"] for o in ran)
    window = max(o["last"] for o in ran) - min(o["first"] for o in ran)
    return {"jobs": jobs, "jobs_per_s": round(jobs / max(window, 1e-3), 1), "window_s": round(window, 3)}


def measure(jobs: int, quick: bool, raw: dict | None = None, concurrencies: tuple[int, ...] = (1, 2)) -> dict:
    """{"1": {...}, "2": {...}}: the loop's rate, and its ratio to the raw limit (see
    `raw.limit_before`)."""
    out = {}
    for processes in concurrencies:
        with temp_dir(f"minimum{processes}") as tmp, json_store(tmp, f"minimum{processes}") as store:
            enqueue_specs(store, spec_lines(job_ids(f"minimum{processes}", jobs)), tmp)
            limit = limit_before(processes, quick, raw)
            result = loop_rate(Path(store), processes)
        result["raw_jobs_per_s"] = limit
        result["ratio_to_raw"] = ratio(result["jobs_per_s"], limit)
        out[str(processes)] = result
    return out
