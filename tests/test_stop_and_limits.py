"""Stops, timeouts and resource bounds, through real `queuectl start` processes.

- Every way of stopping (SIGTERM, Ctrl+C, `queuectl stop [--force]` from elsewhere, a second
  signal) leaves each job completed or runnable, never stuck in processing/, never run twice.
- A job's timeout ends its whole process group, even children that ignore SIGTERM and a job
  that keeps forking, and a job orphaned by a killed `start` is ended by the next one before
  the job runs again.
- A job that floods stdout does not grow the memory of `start` or its workers; how much of that
  output is kept on disk is bounded by `log_max_bytes`.
- No zombie children are left behind.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from faultkit import (
    Proc,
    cleanup,
    folder_counts,
    group_members,
    ids_in,
    jobs_on_disk,
    jsonl,
    marker_counts,
    no_survivors,
    run_until,
    spawn,
    vm_hwm_kb,
    wait_exit,
    wait_for,
    workers_of,
    zombies_of,
)

GRACEFUL = ("sigterm", "sigint", "stop-from-elsewhere")
FORCED = ("double-sigint", "double-sigterm", "stop-force-from-elsewhere")
# Long-lived children of the job that forks heavily, at most.
FORK_CAP = 200


def _send(proc, starter, mode: str, elsewhere) -> None:
    if mode == "sigterm":
        starter.send_signal(signal.SIGTERM)
    elif mode == "sigint":
        os.killpg(starter.pid, signal.SIGINT)  # Ctrl+C reaches the terminal's whole group
    elif mode == "stop-from-elsewhere":
        assert "Stopping all workers..." in proc("stop", cwd=elsewhere).stdout
    elif mode == "stop-force-from-elsewhere":
        proc("stop", "--force", cwd=elsewhere)
    elif mode == "double-sigint":
        os.killpg(starter.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(starter.pid, signal.SIGINT)
    elif mode == "double-sigterm":
        starter.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        starter.send_signal(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("mode", GRACEFUL + FORCED)
def test_a_stop_leaves_each_job_completed_or_runnable_and_never_runs_one_twice(proc, tmp_path, mode):
    marker, go = tmp_path / "marker", tmp_path / "go"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pause = 1 if mode in GRACEFUL else 60  # a forced stop must interrupt the running jobs
    ids = [f"s-{i}" for i in range(6)]
    # the id is written at the end: a job in the marker is a job that ran to completion
    proc("enqueue", "--file", "-", input=jsonl(
        [{"id": i, "command": f"[ -f {go} ] || sleep {pause}; echo {i} >> {marker}"} for i in ids]))
    starter, log = spawn(proc, "start", "--count", "2")
    try:
        assert wait_for(lambda: folder_counts(proc.data)["processing"] == 2, timeout=60)
        running = ids_in(proc.data, "processing")
        _send(proc, starter, mode, elsewhere)
        assert wait_exit(starter, proc.data) == 0, log.read_text()[-3000:]
    finally:
        cleanup(proc.data, [starter])
    assert not no_survivors(proc.data), "a worker or an interrupted command is still running"

    jobs = jobs_on_disk(proc.data)
    seen = marker_counts(marker)
    assert folder_counts(proc.data)["processing"] == 0
    for job_id, (state, _job) in jobs.items():
        assert state in ("completed", "pending", "failed"), (job_id, state)
        assert seen[job_id] == (1 if state == "completed" else 0), (job_id, state, seen[job_id])
    if mode in GRACEFUL:
        assert all(jobs[j][0] == "completed" for j in running), "a graceful stop lets running jobs finish"
    else:
        for j in running:
            state, job = jobs[j]
            assert state == "pending" and job["attempts"] == 0, (j, state, job["attempts"])
            assert job["history"][-1]["counted"] is False

    go.touch()
    run_until(proc, lambda: folder_counts(proc.data)["completed"] == len(ids), count=2)
    seen = marker_counts(marker)
    assert set(seen) == set(ids) and set(seen.values()) == {1}, "each job ran exactly once"


@pytest.mark.parametrize("trap", ["", "trap '' TERM; "], ids=["plain", "ignores-sigterm"])
def test_a_timed_out_job_leaves_no_process_of_its_group(proc, tmp_path, trap):
    pidfile = tmp_path / "pgid"
    proc("config", "set", "job_timeout", "1")
    # $$ is the job's shell, which leads the job's own session and process group
    job = proc.enqueue(f"echo $$ > {pidfile}; {trap}sh -c 'sleep 100 & sleep 100'", "--max-retries", "0")
    try:
        run_until(proc, lambda: folder_counts(proc.data)["dead"] == 1, count=1, timeout=60)
        pgid = int(pidfile.read_text())
        assert wait_for(lambda: not group_members(pgid), timeout=10), f"left alive: {group_members(pgid)}"
    finally:
        cleanup(proc.data, [])
    dead = jobs_on_disk(proc.data)[job][1]
    assert dead["last_error"] == "Timed out after 1s"


def test_a_job_that_never_exits_is_bounded_by_its_timeout(proc):
    proc("config", "set", "job_timeout", "2")
    job = proc.enqueue("trap '' TERM; while :; do sleep 1; done", "--max-retries", "0")
    try:
        # the stop comes only once the job is dead, however long the worker took to start; and a
        # graceful stop waits for the running job, so without the timeout this would never end
        run_until(proc, lambda: folder_counts(proc.data)["dead"] == 1, count=1, timeout=60)
    finally:
        cleanup(proc.data, [])
    state, dead = jobs_on_disk(proc.data)[job]
    assert state == "dead" and dead["last_error"] == "Timed out after 2s"
    assert not no_survivors(proc.data)


def test_a_job_that_forks_heavily_is_bounded_by_its_timeout(proc, tmp_path):
    """A job that never stops forking: up to FORK_CAP long-lived children that ignore SIGTERM
    (the cap keeps a broken timeout from becoming a fork bomb), and a new short-lived child every
    few milliseconds. Its timeout ends it, and every process of its group with it."""
    pidfile = tmp_path / "pgid"
    # 6 s, so that even a slow machine forks FORK_CAP // 2 children before the timeout
    proc("config", "set", "job_timeout", "6")
    job = proc.enqueue(
        f"echo $$ > {pidfile}; trap '' TERM; i=0; while :; do "
        f"if [ $i -lt {FORK_CAP} ]; then sleep 100 & i=$((i + 1)); fi; true & sleep 0.005; done",
        "--max-retries", "0")
    starter, log = spawn(proc, "start", "--count", "1")
    peak = 0

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, len(group_members(pgid)))
        return folder_counts(proc.data)["dead"] == 1

    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=60)
        pgid = int(pidfile.read_text())
        assert wait_for(sample, timeout=90, interval=0.2), log.read_text()[-3000:]
        assert wait_for(lambda: not group_members(pgid), timeout=10), f"left alive: {len(group_members(pgid))}"
        # only once the job is dead: a graceful stop would wait for it to end
        proc("stop")
        wait_exit(starter, proc.data)
    finally:
        cleanup(proc.data, [starter])
    assert starter.returncode == 0, log.read_text()[-3000:]
    assert peak >= FORK_CAP // 2, f"the job never had more than {peak} processes: it did not fork heavily"
    state, dead = jobs_on_disk(proc.data)[job]
    assert state == "dead" and dead["last_error"] == "Timed out after 6s"
    assert not no_survivors(proc.data)


@pytest.mark.slow
def test_a_job_orphaned_by_a_killed_start_is_ended_before_it_runs_again(proc, tmp_path):
    """README: the next start recovers the job; its command, if still running, is ended with its
    process group; no job runs twice at once."""
    marker, pids = tmp_path / "marker", tmp_path / "pgids"
    # Attempt 1 never ends by itself and marks the file while it runs: recovery, however slow,
    # must end it, and a mark after attempt 2 began would show the two running at once.
    job = proc.enqueue(f"echo $$ >> {pids}; echo begin >> {marker}; "
                       f"if [ $(wc -l < {pids}) -eq 1 ]; then while :; do echo tick >> {marker}; sleep 0.05; done; fi; "
                       f"echo end >> {marker}")
    starter, _log = spawn(proc, "start", "--count", "1")
    try:
        assert wait_for(lambda: marker.exists() and "tick" in marker.read_text(), timeout=60)
        os.killpg(starter.pid, signal.SIGKILL)  # the manager and its worker; the job has its own session
        starter.wait()
        orphan = int(pids.read_text().split()[0])
        assert group_members(orphan), "the command outlives its worker until a start recovers it"
        run_until(proc, lambda: folder_counts(proc.data)["completed"] == 1, count=1, timeout=90)
        time.sleep(1)
        left = group_members(orphan)
    finally:
        cleanup(proc.data, [starter])
    state, done = jobs_on_disk(proc.data)[job]
    assert state == "completed" and done["attempts"] == 2
    assert "Worker died during attempt 1" in [h.get("error") for h in done["history"]]
    assert left == [], f"the orphaned command was never ended: {left}"
    lines = marker.read_text().split()
    ticks = lines.count("tick")
    assert lines == ["begin"] + ["tick"] * ticks + ["begin", "end"], "the job ran twice at once"


def test_workers_of_a_killed_start_finish_their_job_and_exit(proc, tmp_path):
    marker, began, go = tmp_path / "marker", tmp_path / "began", tmp_path / "go"
    # the job ends only once told to, after the kill: the kill always lands while it runs
    first = proc.enqueue(f"touch {began}; while [ ! -f {go} ]; do sleep 0.05; done; echo first >> {marker}")
    second = proc.enqueue(f"echo second >> {marker}")
    starter, _log = spawn(proc, "start", "--count", "1")
    try:
        assert wait_for(began.exists, timeout=60)
        [worker] = workers_of(starter.pid)
        os.kill(starter.pid, signal.SIGKILL)  # only the manager
        starter.wait()
        go.touch()
        assert wait_for(lambda: not os.path.exists(f"/proc/{worker}") or _is_zombie(worker), timeout=30)
    finally:
        go.touch()
        cleanup(proc.data, [starter])
    jobs = jobs_on_disk(proc.data)
    assert jobs[first][0] == "completed" and jobs[second][0] == "pending"
    assert marker.read_text() == "first\n"
    assert "No worker manager running" in proc("status").stdout


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_no_zombie_children_remain_after_a_run(proc, tmp_path):
    marker = tmp_path / "marker"
    commands = [f"echo ok >> {marker}", "exit 3", "(sleep 0.2 &)", "sh -c 'sleep 0.1 & exit 0'", "nonexistent_cmd"]
    proc("enqueue", "--file", "-", input=jsonl(
        [{"command": commands[i % len(commands)], "max_retries": 0} for i in range(30)]))
    starter, _log = spawn(proc, "start", "--count", "2")
    try:
        assert wait_for(lambda: len(workers_of(starter.pid)) == 2, timeout=60)
        os.kill(workers_of(starter.pid)[0], signal.SIGKILL)  # the manager must reap and replace it
        assert wait_for(lambda: sum(folder_counts(proc.data)[s] for s in ("completed", "dead")) == 30, timeout=90)
        assert wait_for(lambda: len(workers_of(starter.pid)) == 2, timeout=30)
        family = {starter.pid, *workers_of(starter.pid)}
        assert wait_for(lambda: not zombies_of(family), timeout=5), f"zombies: {zombies_of(family)}"
        proc("stop")
        assert wait_exit(starter, proc.data) == 0
    finally:
        cleanup(proc.data, [starter])
    assert not no_survivors(proc.data)


# -- a job that writes 1 GB to stdout ------------------------------------------------------------
GIGABYTE = 1_000_000_000
MEMORY_LIMIT_KB = 200 * 1024


@pytest.fixture(scope="module")
def flood(tmp_path_factory):
    """Runs one job that writes 1 GB to stdout; returns peak memory and stored output size."""
    proc = Proc(tmp_path_factory.mktemp("flood"))
    job = proc.enqueue(f"head -c {GIGABYTE} /dev/zero", "--max-retries", "0")
    starter, _log = spawn(proc, "start", "--count", "1")
    peaks: dict[str, int] = {}
    try:
        def sample() -> bool:
            for name, pid in [("start", starter.pid)] + [(f"worker {w}", w) for w in workers_of(starter.pid)]:
                kb = vm_hwm_kb(pid)
                if kb is not None:
                    peaks[name] = max(peaks.get(name, 0), kb)
            return sum(folder_counts(proc.data)[s] for s in ("completed", "failed", "dead")) == 1

        assert wait_for(sample, timeout=300, interval=0.2), "the flooding job did not finish"
        sample()
        proc("stop")
        assert wait_exit(starter, proc.data) == 0
    finally:
        cleanup(proc.data, [starter])
    outputs = {p.name: p.stat().st_size for p in (proc.data / "logs").iterdir()}
    cap = int(proc("config", "get", "log_max_bytes").stdout)
    state = jobs_on_disk(proc.data)[job][0]
    for p in (proc.data / "logs").iterdir():
        p.unlink()  # give the gigabyte back at once
    print(f"flood: job {state}; peak memory {peaks} KiB; stored output {outputs}")
    return {"state": state, "peaks": peaks, "outputs": outputs, "cap": cap}


@pytest.mark.slow
def test_a_job_flooding_stdout_does_not_grow_start_or_worker_memory(flood):
    assert flood["state"] == "completed"
    assert any(name.startswith("worker") for name in flood["peaks"]), flood["peaks"]
    assert all(kb < MEMORY_LIMIT_KB for kb in flood["peaks"].values()), flood["peaks"]


@pytest.mark.slow
def test_a_job_flooding_stdout_keeps_a_bounded_amount_of_output(flood):
    """README: log_max_bytes (default 1 MiB) of each stream is kept per attempt, plus a note."""
    assert flood["outputs"], "no output stored at all"
    assert max(flood["outputs"].values()) <= flood["cap"] + 100, flood
