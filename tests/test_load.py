"""Concurrent load: 20 enqueuers add 10,000 jobs while 4 workers drain them and readers poll.

Every job appends its id to a marker file, so "each job ran exactly once" is read off the marker.
Every command (enqueuers, `status`, `list`) must exit 0, and the Completed count that `status`
shows must never go backwards. Three more tests show how the kept counts behind `status` lag and
drift without any crash (README: off by one only if a process is killed mid-update).

20 x 500 = 10,000 jobs take about 50 s on 2 cores; QUEUECTL_LOAD_PER_ENQUEUER=N scales the run
down (or up) where that is too long.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from faultkit import (
    cleanup,
    folder_counts,
    jobs_on_disk,
    jsonl,
    marker_counts,
    no_survivors,
    queuectl_command,
    spawn,
    status_counts,
    wait_exit,
    wait_for,
)

ENQUEUERS = 20
PER_ENQUEUER = int(os.environ.get("QUEUECTL_LOAD_PER_ENQUEUER", "500"))
CHUNK = 100
SINGLES = 5  # per enqueuer, one `enqueue '<spec>'` call each; the rest go through --file -
TOTAL = ENQUEUERS * PER_ENQUEUER
LIST_EVERY = 3.0  # seconds between two `list --state completed` polls


def _run(proc, args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(queuectl_command() + args, cwd=proc.cwd, env=proc.env, input=input,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_jobs_from_twenty_concurrent_enqueuers_run_exactly_once(proc, tmp_path):
    marker = tmp_path / "marker"
    starters = []
    results: list[tuple[list[str], int, str]] = []  # (args, exit code, stderr) of every command
    completed_seen: list[int] = []
    lock = threading.Lock()

    def record(args: list[str], p: subprocess.CompletedProcess) -> None:
        with lock:
            results.append((args, p.returncode, p.stderr))

    def enqueuer(e: int) -> None:
        specs = [{"id": f"l{e:02d}-{i:03d}", "command": f"echo l{e:02d}-{i:03d} >> {marker}"}
                 for i in range(PER_ENQUEUER)]
        bulk, singles = specs[:-SINGLES], specs[-SINGLES:]
        for start in range(0, len(bulk), CHUNK):
            record(["enqueue", "--file", "-"], _run(proc, ["enqueue", "--file", "-"], jsonl(bulk[start:start + CHUNK])))
        for spec in singles:
            record(["enqueue", "<spec>"], _run(proc, ["enqueue", json.dumps(spec)]))

    stop_polling = threading.Event()

    def poll_status() -> None:
        while not stop_polling.is_set():
            p = _run(proc, ["status"])
            record(["status"], p)
            if p.returncode == 0:
                completed_seen.append(status_counts(p.stdout)["completed"])
            stop_polling.wait(0.2)

    def poll_list() -> None:  # reads completed jobs: a heavy reader
        while not stop_polling.is_set():
            record(["list", "--state", "completed"], _run(proc, ["list", "--state", "completed"]))
            stop_polling.wait(LIST_EVERY)

    try:
        # both managers are up (and have rebuilt the counts) before the first job arrives
        for _ in range(2):
            starters.append(spawn(proc, "start", "--count", "2")[0])
        assert wait_for(lambda: proc("status").stdout.count("Manager pid") == 2, timeout=60)
        pollers = [threading.Thread(target=poll_status), threading.Thread(target=poll_list)]
        for t in pollers:
            t.start()
        began = time.monotonic()
        with ThreadPoolExecutor(ENQUEUERS) as pool:
            list(pool.map(enqueuer, range(ENQUEUERS)))
        enqueued_in = time.monotonic() - began
        drained = wait_for(lambda: folder_counts(proc.data)["completed"] >= TOTAL, timeout=240, interval=0.5)
        drained_in = time.monotonic() - began
        stop_polling.set()
        for t in pollers:
            t.join(timeout=120)
        proc("stop")
        codes = [wait_exit(s, proc.data) for s in starters]
    finally:
        stop_polling.set()
        cleanup(proc.data, starters)
    print(f"enqueued {TOTAL} jobs in {enqueued_in:.1f}s, all completed after {drained_in:.1f}s; "
          f"{len(results)} commands, {len(completed_seen)} status polls")
    failures = [r for r in results if r[1] != 0 or (r[0][0] == "enqueue" and r[2])]
    # where the missing jobs are, and any command that failed, tell a lost job from a slow drain
    assert drained, f"{folder_counts(proc.data)} of {TOTAL}; failed commands: {failures[:5]}"
    assert codes == [0, 0]
    assert not no_survivors(proc.data)
    assert failures == [], failures[:5]
    assert all(a <= b for a, b in zip(completed_seen, completed_seen[1:])), completed_seen

    seen = marker_counts(marker)
    assert len(seen) == TOTAL and set(seen.values()) == {1}, "every job ran exactly once"
    counts = folder_counts(proc.data)
    assert counts == {"pending": 0, "processing": 0, "completed": TOTAL, "failed": 0, "dead": 0}
    assert all(job["attempts"] == 1 for _state, job in jobs_on_disk(proc.data).values())


def _long_job_running(proc, marker) -> subprocess.Popen:
    """An idle `start` runs a short job then a long one: the long one's claim is left unwritten
    to counts.json (it comes within COUNT_FLUSH_INTERVAL of the previous write) while it runs."""
    busy, _log = spawn(proc, "start", "--count", "1")
    assert wait_for(lambda: "Manager pid" in proc("status").stdout, timeout=60)
    proc("enqueue", "--file", "-", input=jsonl([
        {"id": "short", "command": "sleep 1"},
        {"id": "long", "command": f"sleep 5; echo long >> {marker}"}]))
    assert wait_for(lambda: folder_counts(proc.data)["completed"] == 1
                    and folder_counts(proc.data)["processing"] == 1, timeout=60)
    time.sleep(1)  # far beyond any flush interval
    return busy


@pytest.mark.slow
def test_status_shows_a_running_job_as_processing(proc, tmp_path):
    busy = None
    try:
        busy = _long_job_running(proc, tmp_path / "marker")
        shown, actual = status_counts(proc("status").stdout), folder_counts(proc.data)
    finally:
        cleanup(proc.data, [busy] if busy else [])
    assert shown == actual


@pytest.mark.slow
def test_status_counts_stay_exact_when_a_start_begins_beside_a_running_job(proc, tmp_path):
    marker = tmp_path / "marker"
    busy = None
    try:
        busy = _long_job_running(proc, marker)
        proc("start", "--count", "1", "--timeout", "0.3")  # nothing to run; it only rebuilds the counts
        assert wait_for(lambda: marker.exists(), timeout=60)
        assert wait_for(lambda: folder_counts(proc.data)["completed"] == 2, timeout=30)
        time.sleep(1)
        shown = status_counts(proc("status").stdout)
    finally:
        cleanup(proc.data, [busy] if busy else [])
    assert shown == folder_counts(proc.data)


@pytest.mark.slow
def test_status_counts_stay_exact_while_workers_claim_fresh_batches(proc):
    """Nothing is killed and only one `start` runs; enqueues and claims merely interleave."""
    proc("config", "set", "poll_interval", "0.01")
    busy, _log = spawn(proc, "start", "--count", "2")
    try:
        assert wait_for(lambda: "Manager pid" in proc("status").stdout, timeout=60)
        time.sleep(1)  # the workers are up and idle, looking for work every 10 ms
        for _ in range(20):
            proc("enqueue", "--file", "-", input=jsonl([{"command": "true"} for _ in range(50)]))
        assert wait_for(lambda: folder_counts(proc.data)["completed"] == 1000, timeout=120)
        proc("stop")
        assert wait_exit(busy, proc.data) == 0
    finally:
        cleanup(proc.data, [busy])
    assert status_counts(proc("status").stdout) == folder_counts(proc.data)
