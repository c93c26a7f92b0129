"""Real `queuectl` processes: many workers, signals, crashes and restarts, judged by side effects."""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from conftest import wait_for
from faultkit import proc_stat, workers_of


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
    job = proc.enqueue(f"echo x >> {began}; sleep 3; echo done >> {marker}")
    starter = proc.popen("start", "--count", "1")
    try:
        assert wait_for(began.exists, timeout=20)  # the attempt has really started
        [worker] = workers_of(starter.pid)
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wait_for(lambda: proc.manager().storage.get(job).attempts == 2, timeout=15)
        assert time.monotonic() - killed_at < 5, "recovery should take seconds"
        assert wait_for(lambda: proc.counts()["completed"] == 1, timeout=20)
    finally:
        stop_and_wait(proc, starter)
    # the killed attempt's command was ended with its worker: only the second attempt wrote
    assert marker.read_text() == "done\n"
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
    run = proc("start", "--count", "1", "--timeout", "2")
    assert "Started 1 worker(s) for 2 seconds" in run.stdout
    assert proc.counts()["completed"] == 1


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
    proc("start", "--count", "1", "--timeout", "2")
    assert proc.manager().storage.get(job).state.value == "completed"
    assert "max_retries = 4" in proc("config").stdout


def test_retries_with_backoff_then_dlq_then_retry(proc):
    job = proc.enqueue("exit 7", "--max-retries", "2")
    proc("config", "set", "backoff_base", "1.5")
    proc("start", "--count", "1", "--timeout", "5")
    dead = proc.manager().storage.get(job)
    assert dead.state.value == "dead" and dead.attempts == 3
    starts = [time.mktime(time.strptime(h["started_at"][:19], "%Y-%m-%dT%H:%M:%S")) for h in dead.history]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert 1 <= gaps[0] <= 3 and 2 <= gaps[1] <= 4, gaps  # 1.5s, then 2.25s
    assert job in proc("dlq", "list").stdout
    assert f"Job {job} moved from DLQ to pending queue" in proc("dlq", "retry", job[:8]).stdout


def test_a_pools_commands_get_only_the_standard_descriptors(proc):
    """multiprocessing hands each worker process descriptors of its own; commands get 0, 1, 2."""
    job = proc.enqueue("ls /proc/$$/fd")  # a redirection here would show the shell's own fd 10
    proc("start", "--count", "1", "--timeout", "2")
    storage = proc.manager().storage
    assert storage.get(job).state.value == "completed"
    with open(storage.output_paths(job, 1)[0]) as listing:
        assert listing.read().split() == ["0", "1", "2"]


def test_workers_of_a_sigkilled_start_stop_after_their_job(proc, tmp_path):
    """Only the `start` process is killed: its workers notice, finish the job they run and exit."""
    began = tmp_path / "began"
    job = proc.enqueue(f"touch {began}; sleep 1")
    waiting = proc.enqueue("true")
    starter = proc.popen("start", "--count", "1")
    assert wait_for(began.exists, timeout=20)
    [worker] = workers_of(starter.pid)
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    assert wait_for(lambda: (proc_stat(worker) or ("Z",))[0] == "Z", timeout=10), "the orphan kept working"
    storage = proc.manager().storage
    assert storage.get(job).state.value == "completed"
    assert storage.get(waiting).state.value == "pending"  # it stopped before taking another job

