"""Real `queuectl` processes: many workers, signals, crashes and restarts, judged by side effects."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from datetime import datetime

import pytest

from conftest import wait_for
from faultkit import group_members, proc_stat, run_until, workers_of


def stop_and_wait(proc, starter, timeout=30):
    proc("stop")
    assert starter.wait(timeout=timeout) == 0


@pytest.mark.slow
def test_four_workers_in_two_starts_run_each_job_exactly_once(proc, tmp_path):
    marker = tmp_path / "marker"
    lines = [json.dumps({"id": f"job-{i:03d}", "command": f"echo job-{i:03d} >> {marker}"})
             for i in range(200)]
    proc("enqueue", "--file", "-", input="\n".join(lines))
    starters = [proc.popen("start", "--count", "2") for _ in range(2)]
    try:
        assert wait_for(lambda: proc.counts()["completed"] == 200, timeout=90)
    finally:
        stop_and_wait(proc, starters[0])
        starters[1].wait(timeout=30)
    seen = Counter(marker.read_text().split())
    assert len(seen) == 200 and set(seen.values()) == {1}
    assert all(j.attempts == 1 for j in proc.manager().list_jobs())


def test_a_sigkilled_workers_job_is_recovered_and_completed(proc, tmp_path):
    marker, began = tmp_path / "marker", tmp_path / "began"
    # Only attempt 1 sleeps, and for longer than the test runs: if its command outlived the kill,
    # it would still be running at the end, not have written "done" by chance of timing.
    job = proc.enqueue(f"echo $$ >> {began}; [ $(wc -l < {began}) -gt 1 ] || sleep 60; echo done >> {marker}")
    starter = proc.popen("start", "--count", "1")
    try:
        assert wait_for(began.exists, timeout=30)  # the attempt has really started
        [worker] = workers_of(starter.pid)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: proc.manager().storage.get(job).attempts == 2, timeout=30)
        # recovery (every 1 s) + respawn backoff (1 s) + a worker's start, beside a busy suite;
        # the benchmark measures how fast, this only that it is not left for a lease to run out
        assert time.monotonic() - killed_at < 15, "recovery should take seconds"
        assert wait_for(lambda: proc.counts()["completed"] == 1, timeout=30)
        first = int(began.read_text().split()[0])
        assert wait_for(lambda: not group_members(first), timeout=10), "the killed attempt's command still runs"
    finally:
        stop_and_wait(proc, starter)
    assert len(began.read_text().split()) == 2
    assert marker.read_text() == "done\n"  # only the second attempt wrote
    assert proc.counts()["processing"] == 0


def test_stop_from_another_directory_lets_the_running_job_finish(proc, tmp_path):
    proc.enqueue("sleep 2")
    starter = proc.popen("start", "--count", "2")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        assert wait_for(lambda: proc.counts()["processing"] == 1, timeout=20)
        out = proc("stop", cwd=elsewhere).stdout
        assert "Stopping all workers..." in out
        assert starter.wait(timeout=20) == 0
    finally:
        if starter.poll() is None:
            starter.kill()
    assert proc.counts()["completed"] == 1
    assert "No worker manager running" in proc("status").stdout


def test_a_stop_request_does_not_linger(proc):
    assert "No worker manager running" in proc("stop").stdout
    starter = proc.popen("start", "--count", "1")
    assert wait_for(lambda: "Manager pid" in proc("status").stdout, timeout=20)
    stop_and_wait(proc, starter)
    proc.enqueue("true")
    # a stop request that lingered would end this start as soon as it began, not at its time
    run = proc("start", "--count", "1", "--timeout", "2")
    assert "Started 1 worker(s) for 2 seconds" in run.stdout
    assert "Run time of 2s is over" in run.stderr and "Stop requested" not in run.stderr, run.stderr
    # a busy machine can take longer than those 2 s to start the worker, so the job is waited for apart
    run_until(proc, lambda: proc.counts()["completed"] == 1, count=1)


def test_sigterm_is_graceful(proc):
    proc.enqueue("sleep 2")
    starter = proc.popen("start", "--count", "1")
    assert wait_for(lambda: proc.counts()["processing"] == 1, timeout=20)
    starter.send_signal(signal.SIGTERM)
    assert starter.wait(timeout=20) == 0
    assert proc.counts()["completed"] == 1


def test_a_second_sigint_forces_and_returns_the_job_uncounted(proc):
    job = proc.enqueue("sleep 60")
    starter = proc.popen("start", "--count", "1")
    assert wait_for(lambda: proc.counts()["processing"] == 1, timeout=20)
    os.killpg(starter.pid, signal.SIGINT)  # as a terminal's Ctrl+C does
    time.sleep(0.5)
    os.killpg(starter.pid, signal.SIGINT)
    assert starter.wait(timeout=20) == 0
    back = proc.manager().storage.get(job)
    assert back.state.value == "pending" and back.attempts == 0


def test_a_killed_manager_is_no_longer_listed(proc):
    starter = proc.popen("start", "--count", "1")
    assert wait_for(lambda: "Manager pid" in proc("status").stdout, timeout=20)
    os.killpg(starter.pid, signal.SIGKILL)
    starter.wait()
    assert wait_for(lambda: "No worker manager running" in proc("status").stdout, timeout=5)


def test_jobs_and_settings_survive_a_restart(proc):
    job = proc.enqueue("echo persisted")
    proc("config", "set", "max_retries", "4")
    assert job[:8] in proc("list", "--state", "pending").stdout
    run_until(proc, lambda: proc.manager().storage.get(job).state.value == "completed", count=1)
    assert "max_retries = 4" in proc("config").stdout


def test_retries_with_backoff_then_dlq_then_retry(proc):
    job = proc.enqueue("exit 7", "--max-retries", "2")
    proc("config", "set", "backoff_base", "1.5")
    # no `start --timeout`: the worker's start plus both backoffs did not always fit in one
    run_until(proc, lambda: proc.manager().storage.get(job).state.value == "dead", count=1)
    dead = proc.manager().storage.get(job)
    assert dead.state.value == "dead" and dead.attempts == 3
    starts = [datetime.fromisoformat(h["started_at"].replace("Z", "+00:00")).timestamp() for h in dead.history]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert 1.4 <= gaps[0] <= 3 and 2.1 <= gaps[1] <= 4, gaps  # 1.5s, then 2.25s
    assert job in proc("dlq", "list").stdout
    assert f"Job {job} moved from DLQ to pending queue" in proc("dlq", "retry", job[:8]).stdout


def test_a_pools_commands_get_only_the_standard_descriptors(proc):
    """multiprocessing hands each worker process descriptors of its own; commands get 0, 1, 2."""
    job = proc.enqueue("ls /proc/$$/fd")  # a redirection here would show the shell's own fd 10
    run_until(proc, lambda: proc.counts()["completed"] == 1, count=1)
    storage = proc.manager().storage
    assert storage.get(job).state.value == "completed"
    with open(storage.output_paths(job, 1)[0]) as listing:
        assert listing.read().split() == ["0", "1", "2"]


def test_workers_of_a_sigkilled_start_stop_after_their_job(proc, tmp_path):
    """Only the `start` process is killed: its workers notice, finish the job they run and exit."""
    began, go = tmp_path / "began", tmp_path / "go"
    # the job ends only once told to, after the kill: the kill always lands while it runs
    job = proc.enqueue(f"touch {began}; while [ ! -f {go} ]; do sleep 0.05; done")
    waiting = proc.enqueue("true")
    starter = proc.popen("start", "--count", "1")
    try:
        assert wait_for(began.exists, timeout=30)
        [worker] = workers_of(starter.pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait()
    finally:
        go.touch()
    assert wait_for(lambda: (proc_stat(worker) or ("Z",))[0] == "Z", timeout=10), "the orphan kept working"
    storage = proc.manager().storage
    assert storage.get(job).state.value == "completed"
    assert storage.get(waiting).state.value == "pending"  # it stopped before taking another job



@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_a_pools_workers_run_as_batch_and_their_commands_do_not(proc, tmp_path):
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the suite itself does not run on the normal policy")
    began, go = tmp_path / "began", tmp_path / "go"
    probe = f"{sys.executable} -c 'import os; print(os.sched_getscheduler(0))'"
    job = proc.enqueue(f"{probe}; touch {began}; while [ ! -f {go} ]; do sleep 0.05; done")
    starter = proc.popen("start", "--count", "1")
    try:
        assert wait_for(began.exists, timeout=30)
        [worker] = workers_of(starter.pid)
        assert os.sched_getscheduler(worker) == os.SCHED_BATCH
        assert os.sched_getscheduler(starter.pid) == os.SCHED_OTHER
        go.touch()
        assert wait_for(lambda: proc.counts()["completed"] == 1, timeout=30)
    finally:
        stop_and_wait(proc, starter)
    with open(proc.manager().storage.output_paths(job, 1)[0]) as out:
        assert out.read().split() == [str(os.SCHED_OTHER)]
