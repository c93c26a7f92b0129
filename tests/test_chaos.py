"""Chaos: workers and whole `start` process groups are SIGKILLed at random while 1,000 jobs run.

The README promises that a dead worker's job comes back by itself, that the interrupted attempt
counts, that writes are atomic, and that no job runs twice at once. Judged by side effects only:
each job appends its id to a marker file, so a second run of a job shows up as a duplicate line,
and every duplicate must be explained by a kill (a "Worker died" attempt in the job's history).

One chaos run per backend (a module fixture, about 25 s each) feeds two tests:
nothing is lost or damaged, and every re-run is on record. On JSON the store is judged from its
files; on Redis, whose key layout is the backend's own business, through the Storage API. A
killed Redis worker's job comes back only when its lease has run out (3 s here, set in the URL;
10 s by default), so the clean run at the end waits for the last leases of the chaos.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from queuectl.core.job import JobState
from queuectl.core.storage import get_storage

from faultkit import (
    STATE_DIRS,
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


class JsonStore:
    """The JSON store at rest, judged from its files."""

    def __init__(self, proc: Proc):
        self.data = proc.data

    def completed(self) -> int:
        return folder_counts(self.data)["completed"]

    def counts(self) -> dict[str, int]:
        return folder_counts(self.data)

    def jobs(self) -> dict[str, tuple[str, dict]]:
        return jobs_on_disk(self.data)

    def damage(self) -> list[str]:
        """Files that do not parse, files set aside as unreadable, and entries that are no job."""
        quarantined = [f"quarantine/{n}: a kill produced an unreadable file"
                       for n in os.listdir(self.data / "quarantine")]
        return unparseable_json(self.data) + quarantined + stray_names(self.data)

    def close(self) -> None:
        pass


class RedisProc(Proc):
    """`queuectl` against a Redis URL. `data` is the URL: faultkit finds the processes of a store
    by QUEUECTL_STORAGE_PATH=<data> in their environment, so cleanup and hang reports work."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path)
        self.data = url  # type: ignore[assignment]
        self.env["QUEUECTL_STORAGE_PATH"] = url


class RedisStore:
    """The Redis store at rest, judged through the Storage API: what the backend lists and loads."""

    def __init__(self, url: str):
        self.store = get_storage(url)

    def completed(self) -> int:
        return self.store.counts()[JobState.COMPLETED]  # O(1): polled while the queue drains

    def counts(self) -> dict[str, int]:
        """Counted from the listing, not from the counters `status` shows (those are checked
        against this)."""
        counts = dict.fromkeys(STATE_DIRS, 0)
        for state, _job in self.jobs().values():
            counts[state] += 1
        return counts

    def jobs(self) -> dict[str, tuple[str, dict]]:
        found: dict[str, tuple[str, dict]] = {}
        for job in self.store.jobs():
            assert job.id not in found, f"job {job.id} is listed in two states"
            found[job.id] = (job.state.value, job.to_dict())
        return found

    def damage(self) -> list[str]:
        """Ids the store holds whose record does not load (a corrupt record is skipped by every
        listing, so it is found by id), and listed jobs that the id index lacks or the reverse."""
        ids = self.store.match_ids("")
        bad = [f"{i}: does not load" for i in ids if self.store.get(i) is None]
        listed = set(self.jobs())
        bad += [f"{i}: in no state index" for i in sorted(set(ids) - listed)]
        bad += [f"{i}: listed but not in the id index" for i in sorted(listed - set(ids))]
        return bad

    def close(self) -> None:
        self.store.close()


def _redis_store(request, tmp_path: Path) -> tuple[Proc, RedisStore, Callable[[], None]]:
    """A fresh key prefix on the session's redis-server, as tests/test_redis.py isolates itself;
    returns the command, the store and what removes the prefix's keys and local output after."""
    server = request.getfixturevalue("redis_server")
    prefix = f"chaos-{uuid.uuid4().hex[:10]}"
    url = server.url(prefix=prefix, lease=3)
    store = RedisStore(url)

    def forget() -> None:
        # attempt output stays on this host (one folder per store), the jobs in Redis
        shutil.rmtree(os.path.dirname(store.store.output_paths("x", 1)[0]), ignore_errors=True)
        client = server.client()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        client.close()

    return RedisProc(tmp_path, url), store, forget


@pytest.fixture(scope="module", params=["json", "redis"])
def chaos(request, tmp_path_factory):
    """Runs the chaos, then one clean `start` to finish; yields what the tests judge."""
    tmp_path = tmp_path_factory.mktemp(f"chaos-{request.param}")
    if request.param == "redis":
        proc, store, forget = _redis_store(request, tmp_path)
    else:
        proc = Proc(tmp_path)
        store, forget = JsonStore(proc), None
    try:
        yield _run_chaos(proc, store)
    finally:
        store.close()
        if forget is not None:
            forget()


def _run_chaos(proc: Proc, store: JsonStore | RedisStore) -> dict:
    seed = int(time.time())
    rng = random.Random(seed)
    marker = proc.cwd / "marker"
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
    during = store.completed()

    # One clean run finishes the rest. It recovers whatever the kills left behind: on JSON at
    # its start-up, on Redis as the dead workers' leases run out (within about 4 s).
    finished = time.monotonic()
    try:
        run_until(proc, lambda: store.completed() == JOBS, count=2, timeout=120)
    finally:
        cleanup(proc.data, [])
    seen = marker_counts(marker)
    print(f"\nchaos seed {seed}: {worker_kills} worker kills ({group_kills} whole start groups), "
          f"{during} jobs completed during the chaos, {sum(n - 1 for n in seen.values())} duplicate runs, "
          f"clean run {time.monotonic() - finished:.1f} s")
    return {"proc": proc, "store": store, "ids": ids, "codes": codes, "kills": worker_kills, "seen": seen,
            "jobs": store.jobs(), "status": proc("status").stdout}


@pytest.mark.slow
def test_random_sigkills_lose_no_job_and_damage_nothing(chaos):
    proc, ids = chaos["proc"], chaos["ids"]
    assert chaos["codes"] == [0] * len(chaos["codes"]), "a surviving start did not stop cleanly"
    assert not no_survivors(proc.data), "a worker or a job outlived its start"

    store = chaos["store"]
    counts = store.counts()
    assert counts == {"pending": 0, "processing": 0, "completed": JOBS, "failed": 0, "dead": 0}
    assert status_counts(chaos["status"]) == counts
    assert store.damage() == []

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
        # A worker killed after taking a job but before recording the attempt's start leaves a
        # "Worker died" entry under the attempt number before (0 on a first claim), and no
        # attempt is counted: so the attempts cut short are the distinct numbers from 1.
        died = {h["attempt"] for h in job["history"] if "Worker died" in (h.get("error") or "")} - {0}
        runs = seen[job_id]
        # every attempt but the last was cut short by a kill, and each run is an attempt
        if job["attempts"] != len(died) + 1 or runs > job["attempts"]:
            unexplained.append((job_id, runs, job["attempts"], sorted(died)))
    assert unexplained == [], "(id, runs, attempts, attempts that died) that no kill explains"


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
