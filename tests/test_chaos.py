"""Chaos: workers and whole `start` process groups are SIGKILLed at random while 1,000 jobs run.

The README promises that a dead worker's job comes back by itself, that the interrupted attempt
counts, that writes are atomic, and that no job runs twice at once. Judged by side effects only:
each job appends its id to a marker file, so a second run of a job shows up as a duplicate line,
and every duplicate must be explained by a kill (a "Worker died" attempt in the job's history).

One chaos run (a module fixture, about 30 s) feeds two tests: nothing is lost or damaged, and
every re-run is on record.
"""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from faultkit import (
    Proc,
    cleanup,
    folder_counts,
    jobs_on_disk,
    jsonl,
    marker_counts,
    no_survivors,
    registered,
    run_until,
    spawn,
    status_counts,
    stray_names,
    unparseable_json,
    wait_exit,
    wait_for,
    workers_of,
)

JOBS = 1000
CHAOS_SECONDS = 20
WORKERS_PER_START = 2


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    """Runs the chaos, then one clean `start` to finish; returns what the tests judge."""
    tmp_path = tmp_path_factory.mktemp("chaos")
    proc = Proc(tmp_path)
    seed = int(time.time())
    rng = random.Random(seed)
    marker = tmp_path / "marker"
    ids = [f"job-{i:04d}" for i in range(JOBS)]
    specs = [{"id": j, "command": f"echo {j} >> {marker}; sleep {rng.randint(0, 50) / 1000:.3f}",
              "max_retries": 10} for j in ids]
    assert proc("enqueue", "--file", "-", input=jsonl(specs)).stdout.strip() == f"Enqueued {JOBS} job(s)"

    everything = []      # every `start` ever spawned, for the clean-up
    running = []
    worker_kills = 0     # worker processes SIGKILLed: each can cut short at most one attempt
    group_kills = 0
    try:
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            running = [p for p in running if p.poll() is None]
            while len(running) < 2:
                starter, _log = spawn(proc, "start", "--count", str(WORKERS_PER_START))
                running.append(starter)
                everything.append(starter)
            time.sleep(rng.uniform(0.3, 0.7))
            if rng.random() < 0.2:
                victim = rng.choice(running)
                os.killpg(victim.pid, signal.SIGKILL)  # the manager, its workers, all at once
                victim.wait()
                worker_kills += WORKERS_PER_START  # a start never has more live workers than this
                group_kills += 1
            else:
                workers = [w for p in running for w in workers_of(p.pid)]
                if workers:
                    try:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                        worker_kills += 1
                    except ProcessLookupError:
                        pass
        running = [p for p in running if p.poll() is None]
        assert all(registered(proc, p) for p in running)  # a stop reaches registered managers only
        proc("stop")
        codes = [wait_exit(p, proc.data) for p in running]
    finally:
        cleanup(proc.data, everything)
    during = folder_counts(proc.data)["completed"]

    # one clean run finishes the rest; its own start-up recovers whatever the kills left behind
    try:
        run_until(proc, lambda: folder_counts(proc.data)["completed"] == JOBS, count=2, timeout=120)
    finally:
        cleanup(proc.data, [])
    seen = marker_counts(marker)
    print(f"\nchaos seed {seed}: {worker_kills} worker kills ({group_kills} whole start groups), "
          f"{during} jobs completed during the chaos, {sum(n - 1 for n in seen.values())} duplicate runs")
    return {"proc": proc, "ids": ids, "codes": codes, "kills": worker_kills, "seen": seen,
            "jobs": jobs_on_disk(proc.data), "status": proc("status").stdout}


@pytest.mark.slow
def test_random_sigkills_lose_no_job_and_damage_nothing(chaos):
    proc, ids = chaos["proc"], chaos["ids"]
    assert chaos["codes"] == [0] * len(chaos["codes"]), "a surviving start did not stop cleanly"
    assert not no_survivors(proc.data), "a worker or a job outlived its start"

    counts = folder_counts(proc.data)
    assert counts == {"pending": 0, "processing": 0, "completed": JOBS, "failed": 0, "dead": 0}
    assert status_counts(chaos["status"]) == counts
    assert unparseable_json(proc.data) == []
    assert os.listdir(proc.data / "quarantine") == [], "a kill produced an unreadable file"
    assert stray_names(proc.data) == []

    assert set(chaos["seen"]) == set(ids), "every job ran, and nothing else did"
    assert set(chaos["jobs"]) == set(ids)


@pytest.mark.slow
def test_every_rerun_after_a_kill_is_recorded_as_a_worker_death(chaos):
    """README: the interrupted attempt counts; `attempts` counts attempts made. So a kill re-runs
    at most the one job its worker had in hand, and every re-run is on record."""
    seen = chaos["seen"]
    duplicates = sum(n - 1 for n in seen.values())
    assert duplicates <= chaos["kills"], f"{duplicates} duplicate runs but only {chaos['kills']} kills"
    unexplained = []
    for job_id, (_state, job) in chaos["jobs"].items():
        died = sum(1 for h in job["history"] if "Worker died" in (h.get("error") or ""))
        runs = seen[job_id]
        # every attempt but the last was cut short by a kill, and each run is an attempt
        if job["attempts"] != died + 1 or runs > job["attempts"]:
            unexplained.append((job_id, runs, job["attempts"], died))
    assert unexplained == [], "(id, runs, attempts, 'Worker died' entries) that no kill explains"


def _first_done_second_running(proc, marker):
    """One worker has finished `first` a second ago and is running `second` (3 s)."""
    proc("enqueue", "--file", "-", input=jsonl([
        {"id": "first", "command": f"echo first >> {marker}"},
        {"id": "second", "command": f"sleep 3; echo second >> {marker}"}]))
    starter, _log = spawn(proc, "start", "--count", "1")
    assert wait_for(lambda: marker.exists() and folder_counts(proc.data)["pending"] == 0, timeout=60)
    time.sleep(1)
    return starter


def test_a_finished_job_is_listed_as_completed_while_the_next_one_runs(proc, tmp_path):
    starter = None
    try:
        starter = _first_done_second_running(proc, tmp_path / "marker")
        listing = proc("list").stdout
    finally:
        cleanup(proc.data, [starter] if starter else [])
    [line] = [row for row in listing.splitlines() if row.startswith("first")]
    assert line.split()[-3:-1] == ["completed", "1"], listing


def test_a_job_that_finished_before_its_worker_died_does_not_run_again(proc, tmp_path):
    """The kill comes a second after the first job ended: no attempt of it was interrupted."""
    marker = tmp_path / "marker"
    starter = None
    try:
        starter = _first_done_second_running(proc, marker)
        [worker] = workers_of(starter.pid)
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: folder_counts(proc.data)["completed"] == 2, timeout=60)
        proc("stop")
        starter.wait(timeout=60)
    finally:
        cleanup(proc.data, [starter] if starter else [])
    assert marker_counts(marker)["first"] == 1, "a finished job ran again"
    assert jobs_on_disk(proc.data)["first"][1]["attempts"] == 1
