"""Crashes while writing: `enqueue`, `config set` and `dlq retry` SIGKILLed at random points.

The README promises atomic, durable writes ("a crash at any point leaves either the old file or
the new one, never a partial one") and that `enqueue` returns only once the job is on disk.
Hundreds of short-lived commands are killed mid-flight, several at a time; then every file must
parse, every job whose enqueue reported success must exist, every command must work, and one
clean `start` must run every stored job exactly once.
"""
from __future__ import annotations

import json
import os
import random
import signal
import stat
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from faultkit import (
    STATE_DIRS,
    cleanup,
    folder_counts,
    jobs_on_disk,
    jsonl,
    marker_counts,
    no_survivors,
    queuectl_command,
    run_until,
    spawn,
    status_counts,
    stray_names,
    unparseable_json,
    wait_for,
)

BUDGET_SECONDS = 40
PARALLEL = 3
DEAD_JOBS = 30
BATCH = 20
RETRY_VALUES = (2, 4, 5, 6)


@dataclass
class Run:
    kind: str
    args: list[str]
    input: str | None
    ids: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def _execute(proc, run: Run, kill_after: float | None) -> Run:
    """Runs one command in its own session; SIGKILLs the session after `kill_after` seconds."""
    began = time.monotonic()
    p = subprocess.Popen(queuectl_command() + run.args, cwd=proc.cwd, env=proc.env, text=True,
                         stdin=subprocess.PIPE if run.input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    timer = None
    if kill_after is not None:
        timer = threading.Timer(kill_after, _kill_group, (p.pid,))
        timer.start()
    try:
        run.stdout, run.stderr = p.communicate(run.input, timeout=60)
    except BrokenPipeError:  # killed before it read its input
        run.stdout, run.stderr = p.communicate(timeout=60)
    finally:
        if timer is not None:
            timer.cancel()
        if p.poll() is None:
            _kill_group(p.pid)
            p.wait()
    run.returncode = p.returncode
    run.duration = time.monotonic() - began
    return run


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkilled_writers_never_damage_the_store(proc, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    marker = tmp_path / "marker"

    dead = [f"dead-{i:02d}" for i in range(DEAD_JOBS)]
    proc("enqueue", "--file", "-", input=jsonl([{"id": d, "command": "exit 1", "max_retries": 0} for d in dead]))
    run_until(proc, lambda: folder_counts(proc.data)["dead"] == DEAD_JOBS, count=2)

    def single(n: int) -> Run:
        job_id = f"e-{n:04d}"
        return Run("enqueue", ["enqueue", json.dumps({"id": job_id, "command": f"echo {job_id} >> {marker}"})],
                   None, [job_id])

    def batch(n: int) -> Run:
        ids = [f"b-{n:03d}-{k:02d}" for k in range(BATCH)]
        return Run("batch", ["enqueue", "--file", "-"], jsonl([{"id": i, "command": f"echo {i} >> {marker}"}
                                                                 for i in ids]), ids)

    def config(n: int) -> Run:
        return Run("config", ["config", "set", "max_retries", str(RETRY_VALUES[n % len(RETRY_VALUES)])], None, [])

    def retry(n: int) -> Run:
        return Run("dlq", ["dlq", "retry", dead[n]], None, [dead[n]])

    # how long each kind takes when left alone, measured under the same parallelism: kills are
    # aimed mostly at the end of a run, where the writes happen, and the rest anywhere
    factories = {"enqueue": single, "batch": batch, "config": config, "dlq": retry}
    tasks = ([single(n) for n in range(4, 130)] + [batch(n) for n in range(2, 25)]
             + [config(n) for n in range(2, 25)] + [retry(n) for n in range(2, DEAD_JOBS)])
    rng.shuffle(tasks)
    calibration = [factories[kind](n) for kind in factories for n in range(2)]
    calibration += [single(2), single(3)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(lambda r: _execute(proc, r, None), calibration))
    assert all(r.returncode == 0 for r in done), [(r.args, r.stderr) for r in done if r.returncode]
    typical = {kind: statistics.median(r.duration for r in done if r.kind == kind) for kind in factories}

    deadline = time.monotonic() + BUDGET_SECONDS

    def crash(run: Run) -> Run | None:
        if time.monotonic() > deadline:
            return None
        span = typical[run.kind]
        delay = rng.uniform(0.0, span) if rng.random() < 0.2 else rng.uniform(0.7, 1.3) * span
        return _execute(proc, run, delay)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            runs = [r for r in pool.map(crash, tasks) if r is not None]
    finally:
        cleanup(proc.data, [])
    runs += done
    killed = sum(r.killed for r in runs)
    print(f"seed {seed}: {len(runs)} runs, {killed} killed; typical durations {typical}")
    assert killed >= 20, "too few kills to mean anything"
    landed = sum(1 for r in runs if r.killed and r.kind == "enqueue" and r.ids[0] in jobs_on_disk(proc.data))
    print(f"{landed} killed single enqueues had already stored their job")

    # a command that was not killed succeeded, and said nothing on stderr
    failures = [(r.args, r.returncode, r.stderr) for r in runs if not r.killed and (r.returncode or r.stderr)]
    assert failures == []

    # the store: every file parses, nothing was set aside, no partial file under a job's name
    assert unparseable_json(proc.data) == []
    assert os.listdir(proc.data / "quarantine") == []
    assert stray_names(proc.data) == []
    jobs = jobs_on_disk(proc.data)
    for r in runs:
        if r.returncode != 0:
            continue
        if r.kind == "enqueue":
            assert f"ID: {r.ids[0]}" in r.stdout and r.ids[0] in jobs, r.stdout
        elif r.kind == "batch":
            assert r.stdout.strip() == f"Enqueued {BATCH} job(s)"
            assert all(i in jobs for i in r.ids), "a reported batch is incomplete"
        elif r.kind == "dlq":
            assert jobs[r.ids[0]][0] == "pending", f"{r.ids[0]} was reported retried but is {jobs[r.ids[0]][0]}"

    # every command still works
    for args in (["status"], ["list"], ["dlq", "list"], ["config"], ["list", "--state", "processing"]):
        p = proc(*args, check=False)
        assert p.returncode == 0 and p.stderr == "", (args, p.stderr)
    assert int(proc("config", "get", "max_retries").stdout) in (3, *RETRY_VALUES)

    # a clean start recovers what the kills left half-moved and runs every stored job once
    log = run_until(proc, lambda: _settled(proc.data), count=2, timeout=90)
    assert "Traceback" not in log and "Set aside" not in log, log[-3000:]
    assert not no_survivors(proc.data)
    jobs = jobs_on_disk(proc.data)
    enqueued = {i for i in jobs if not i.startswith("dead-")}
    assert {i for i, (state, _) in jobs.items() if state == "completed"} == enqueued
    assert {i for i, (state, _) in jobs.items() if state == "dead"} == set(dead)
    seen = marker_counts(marker)
    assert set(seen) == enqueued and set(seen.values()) == {1}, "every stored job ran exactly once"
    counts = folder_counts(proc.data)
    assert status_counts(proc("status").stdout) == counts
    assert proc("list").returncode == 0
    assert unparseable_json(proc.data) == []
    for state in STATE_DIRS:
        for name in os.listdir(proc.data / state):
            mode = stat.S_IMODE(os.stat(proc.data / state / name).st_mode)
            assert mode == 0o600, f"{state}/{name} has mode {mode:o}"


def _settled(data) -> bool:
    counts = folder_counts(data)
    return counts["pending"] == counts["processing"] == counts["failed"] == 0


def test_a_batch_that_fails_runs_none_of_its_jobs(proc, tmp_path):
    """README: `--file` is all or nothing; a duplicate id is an error and nothing is stored."""
    marker = tmp_path / "marker"
    proc("enqueue", json.dumps({"id": "taken", "command": "true"}))
    proc("config", "set", "poll_interval", "0.01")
    busy, _log = spawn(proc, "start", "--count", "2")
    try:
        assert wait_for(lambda: "Manager pid" in proc("status").stdout, timeout=60)
        assert wait_for(lambda: folder_counts(proc.data)["completed"] == 1, timeout=60)
        specs = [{"id": f"batch-{i:03d}", "command": f"echo batch-{i:03d} >> {marker}"} for i in range(800)]
        specs.append({"id": "taken", "command": "true"})  # only the store can tell it is a duplicate
        p = proc("enqueue", "--file", "-", input=jsonl(specs), check=False)
        time.sleep(2)
    finally:
        cleanup(proc.data, [busy])
    assert p.returncode == 1 and "already exists" in p.stderr, p.stderr
    ran = marker_counts(marker)
    left = [i for i in jobs_on_disk(proc.data) if i.startswith("batch-")]
    assert not ran and not left, f"{len(ran)} jobs of the refused batch ran, {len(left)} are stored"
