"""Output capture, history, metrics, machine-readable output, watch, --wait and completion."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queuectl.core.job import JobState
from queuectl.core.worker import Worker

from conftest import queuectl_command, wait_for
from faultkit import run_until

JOB_KEYS = {"id", "command", "state", "attempts", "max_retries", "priority", "created_at", "updated_at",
            "started_at", "finished_at", "run_at", "waiting_for_dependencies", "timeout", "no_retry_on",
            "after", "unique_key", "last_error", "exit_code", "worker", "history"}
METRIC_KEYS = {"jobs", "completed_last_minute", "failed_last_minute", "completed_last_hour", "failed_last_hour",
               "throughput_per_second", "success_rate", "run_time_ms", "queue_wait_ms", "failures_by_exit_code",
               "oldest_pending_age_seconds", "managers", "workers", "totals"}


@pytest.fixture
def ran(proc):
    """A store with one job that failed once then succeeded, and one that died."""
    flaky = proc.enqueue("echo out-$(ls flag 2>/dev/null | wc -l); test -f flag || { touch flag; "
                         "echo 'first failure' >&2; exit 5; }", "--max-retries", "2")
    dead = proc.enqueue("echo bye; echo 'fatal: nope' >&2; exit 9", "--max-retries", "0")
    proc("config", "set", "backoff_base", "1")
    starter = proc.popen("start", "--count", "2")  # stopped once both jobs ended: ~1.5 s, not 3
    try:
        assert wait_for(lambda: proc.counts()["completed"] == 1 and proc.counts()["dead"] == 1, timeout=20)
    finally:
        proc("stop")
        assert starter.wait(timeout=30) == 0
    return proc, flaky, dead


def test_each_attempts_output_is_kept_and_logs_shows_it(ran):
    proc, flaky, dead = ran
    assert proc("logs", flaky).stdout == "out-1\n"
    assert proc("logs", flaky, "--attempt", "1").stdout == "out-0\n"
    assert proc("logs", flaky, "--attempt", "1", "--stderr").stdout == "first failure\n"
    both = proc("logs", dead, "--all").stdout
    assert "==> stdout (attempt 1) <==\nbye\n" in both and "==> stderr (attempt 1) <==\nfatal: nope\n" in both
    assert proc("logs", flaky, "--attempt", "7", check=False).returncode == 1  # the store says no


def test_logs_tail(proc):
    job = proc.enqueue("seq 1 100")
    run_until(proc, lambda: proc.counts()["completed"] == 1, count=1)
    assert proc("logs", job, "--tail", "3").stdout == "98\n99\n100\n"


def test_output_is_capped_keeping_the_tail(proc):
    proc("config", "set", "log_max_bytes", "10000")
    job = proc.enqueue("seq 1 200000")
    run_until(proc, lambda: proc.counts()["completed"] == 1, count=1)
    text = proc("logs", job).stdout
    assert text.startswith("[queuectl: ") and "earlier bytes cut]" in text.splitlines()[0]
    assert text.endswith("199999\n200000\n")
    out_files = [p for p in (proc.data / "logs").iterdir() if p.name.startswith(job)]
    assert all(p.stat().st_size <= 10000 + 100 for p in out_files)


def follow_while_running(proc, job: str) -> str:
    """What `logs --follow` prints of the job, run by a `start` from before it starts."""
    run = proc.popen("start", "--count", "1")
    try:
        assert wait_for(lambda: proc.counts()["processing"] == 1, timeout=20)
        return proc("logs", job, "--follow", timeout=30).stdout
    finally:
        proc("stop")
        run.wait(timeout=20)


def test_logs_follow_streams_a_running_job(proc):
    job = proc.enqueue("for i in 1 2 3; do echo line-$i; sleep 0.4; done")
    out = follow_while_running(proc, job)
    assert out == "line-1\nline-2\nline-3\n"


def test_logs_follow_prints_nothing_twice_while_the_output_is_cut(proc):
    """Output cut to its tail while followed: what was printed is not printed again, what was cut
    unseen is noted, and every line comes in order, ending with the last."""
    proc("config", "set", "log_max_bytes", "1000")
    job = proc.enqueue("i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); sleep 0.004; done; printf end")
    out = follow_while_running(proc, job)
    lines = out.splitlines()
    assert lines[-1] == "end" and out.endswith("end\n")
    numbers = [int(line[4:]) for line in lines if line.startswith("line")]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 399, out
    notes = [line for line in lines if line.startswith("[queuectl: ")]
    assert len(numbers) + len(notes) + 1 == len(lines)
    assert len(numbers) == 400 or notes  # lines missing only where a cut is noted


def test_dlq_list_shows_the_last_stderr_line(ran):
    proc, _, dead = ran
    row = next(line for line in proc("dlq", "list").stdout.splitlines() if dead in line)
    assert "Exit code 9: fatal: nope" in row


def test_show_prints_fields_and_attempts(ran):
    proc, flaky, _ = ran
    out = proc("show", flaky[:8]).stdout
    assert f"id                       {flaky}" in out and "state                    completed" in out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("Attempt"))
    for column in ("Started", "Finished", "Duration", "Exit", "Timed Out", "Worker", "Error"):
        assert column in header
    assert "first failure" in out


def test_json_outputs_have_the_documented_keys(ran):
    proc, flaky, dead = ran

    def doc(*args):
        out = proc(*args, "--json").stdout
        return json.loads(out)

    status = doc("status")
    assert set(status) == {"counts", "total", "managers"} and status["counts"]["dead"] == 1
    listing = doc("list")
    assert set(listing) == {"total", "limit", "offset", "jobs"} and listing["total"] == 2
    assert all(set(j) == JOB_KEYS for j in listing["jobs"])
    shown = doc("show", flaky)
    assert set(shown) == JOB_KEYS and len(shown["history"]) == 2
    assert shown["history"][0]["exit_code"] == 5
    dlq = doc("dlq", "list")
    assert [j["id"] for j in dlq["jobs"]] == [dead]
    assert doc("config")["backoff_base"] == 1
    report = doc("metrics")
    assert set(report) == METRIC_KEYS
    assert report["totals"]["completed_total"] == 1 and report["failures_by_exit_code"] == {"5": 1, "9": 1}
    enqueued = json.loads(proc("enqueue", "true", "--json").stdout)
    assert set(enqueued) == {"id", "command", "state", "existing"} and enqueued["state"] == "pending"


def test_prometheus_output_parses(ran):
    proc, _, _ = ran
    text = proc("metrics", "--prometheus").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["queuectl_jobs"].type == "gauge"
    assert families["queuectl_jobs_completed"].type == "counter"  # the parser drops _total
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("queuectl_jobs", (("state", "dead"),))] == 1
    assert samples[("queuectl_jobs_completed_total", ())] == 1
    assert samples[("queuectl_job_run_seconds_count", ())] == 3
    assert samples[("queuectl_job_run_seconds_bucket", (("le", "+Inf"),))] == 3


def test_metrics_are_kept_as_aggregates_not_read_from_jobs(manager):
    minute = int(time.time() // 60)
    w = Worker(manager, "worker-1")
    for _ in range(3):
        manager.enqueue("true")
    manager.enqueue("exit 2", max_retries=0)
    while w.run_once():
        pass
    w.unregister()
    for job in manager.list_jobs(JobState.COMPLETED):  # history is gone, the aggregates stay
        manager.storage.delete(job)
    report = manager.metrics()
    assert report["totals"]["completed_total"] == 3 and report["completed_last_hour"] == 3
    if int(time.time() // 60) == minute:  # across a minute's end the last minute counts only part of them
        assert report["completed_last_minute"] == 3
    assert report["success_rate"] == 0.75 and report["failures_by_exit_code"] == {"2": 1}
    assert report["run_time_ms"]["count"] == 4 and report["run_time_ms"]["p50"] is not None


def test_per_minute_counters_keep_the_last_hour_and_drop_older_ones_when_a_minute_begins():
    from queuectl.core import metrics
    from queuectl.core.job import Job

    now = 1_800_000_000.0  # the start of a minute
    minute = int(now // 60)
    agg = metrics.empty()
    agg["minutes"] = {str(m): [1, 0] for m in range(minute - 70, minute)}
    old = Job(id="a", command="true", state=JobState.PROCESSING, attempts=1)
    done = old.evolve(state=JobState.COMPLETED, history=[{"attempt": 1, "exit_code": 0, "duration": 0.5}])
    metrics.apply(agg, old, done, now)
    assert sorted(map(int, agg["minutes"])) == list(range(minute - metrics.KEEP_MINUTES, minute + 1))
    assert agg["minutes"][str(minute)] == [1, 0]
    agg["minutes"][str(minute - 61)] = [5, 5]  # none goes within a minute, older ones included
    metrics.apply(agg, old, done, now + 30)
    assert agg["minutes"][str(minute)] == [2, 0] and str(minute - 61) in agg["minutes"]
    metrics.apply(agg, old, done, now + 60)  # the next minute begins
    assert min(map(int, agg["minutes"])) == minute + 1 - metrics.KEEP_MINUTES
    assert metrics.window(agg, 3600, now + 60)[0] == 3 + metrics.KEEP_MINUTES - 2


def test_a_nan_observation_counts_as_zero_and_leaves_the_sums_whole():
    """A damaged due time (NaN parses as a float) must not poison the histogram's sum for good."""
    from queuectl.core import metrics

    hist = metrics.empty()["wait_ms"]
    for value in (float("nan"), -5.0, 7.0):
        metrics.observe(hist, value)
    assert hist["count"] == 3 and hist["sum"] == 7.0 and hist["max"] == 7.0
    assert hist["buckets"][0] == 2


def test_oldest_pending_age(manager):
    assert manager.metrics()["oldest_pending_age_seconds"] is None
    manager.enqueue("true")
    time.sleep(0.2)
    assert manager.metrics()["oldest_pending_age_seconds"] >= 0.2


def test_list_shows_the_newest_200_with_a_footer(proc):
    proc("enqueue", "--file", "-", input="\n".join(f'{{"id":"j{i:03d}","command":"true"}}' for i in range(205)))
    lines = proc("list").stdout.splitlines()
    assert lines[2].startswith("j005") and lines[-2].startswith("j204")
    assert lines[-1] == "... 5 older job(s) not shown (use --limit and --offset)"
    page = proc("list", "--limit", "3", "--offset", "2").stdout.splitlines()
    assert [line.split()[0] for line in page[2:5]] == ["j200", "j201", "j202"]
    assert json.loads(proc("list", "--json", "--limit", "1").stdout)["jobs"][0]["id"] == "j204"


def test_status_watch_prints_plain_lines_when_not_a_terminal(proc):
    proc.enqueue("true")
    watcher = subprocess.Popen(queuectl_command() + ["status", "--watch", "--interval", "0.2"], env=proc.env,
                               stdout=subprocess.PIPE)
    try:
        out = _watch_until(watcher, watcher.stdout.fileno(), lambda seen: seen.count(b"\n") >= 3)
    finally:
        watcher.stdout.close()
    lines = out.decode(errors="replace").splitlines()
    assert len(lines) >= 3 and all("pending=1" in line and "\x1b" not in line for line in lines)


def test_enqueue_wait_prints_output_and_exits_with_the_jobs_code(proc):
    run = proc.popen("start", "--count", "2")
    try:
        ok = proc("enqueue", "echo hi; echo warn >&2", "--wait", check=False)
        assert (ok.returncode, ok.stdout) == (0, "hi\n") and "warn" in ok.stderr
        bad = proc("enqueue", "exit 3", "--max-retries", "0", "--wait", check=False)
        assert bad.returncode == 3 and bad.stdout == ""
        slow = proc("enqueue", "sleep 5", "--timeout", "1", "--max-retries", "0", "--wait", check=False)
        assert slow.returncode == 124
    finally:
        proc("stop")
        run.wait(timeout=30)


def test_completion_offers_job_ids(proc):
    proc("enqueue", '{"id":"alpha-1","command":"true"}')
    proc("enqueue", '{"id":"alpha-2","command":"true"}')
    proc("enqueue", '{"id":"beta","command":"true"}')
    env = dict(proc.env, _QUEUECTL_COMPLETE="bash_complete", COMP_WORDS="queuectl show al", COMP_CWORD="2")
    out = subprocess.run(queuectl_command(), env=env, capture_output=True, text=True, timeout=30).stdout
    assert "alpha-1" in out and "alpha-2" in out and "beta" not in out


def test_follow_on_a_finished_job_prints_and_returns(proc):
    job = proc.enqueue("echo done")
    run_until(proc, lambda: proc.counts()["completed"] == 1, count=1)
    assert proc("logs", job, "-f", timeout=10).stdout == "done\n"


def test_output_files_are_private(ran):
    proc, _, _ = ran
    for path in (proc.data / "logs").iterdir():
        assert (os.stat(path).st_mode & 0o777) == 0o600


def test_watch_redraws_in_place_on_a_terminal(proc):
    import pty
    proc.enqueue("true")
    master, slave = pty.openpty()
    watcher = subprocess.Popen(queuectl_command() + ["status", "--watch", "--interval", "0.2"], env=proc.env,
                               stdout=slave, stderr=slave)
    os.close(slave)
    out = _watch_until(watcher, master, lambda seen: seen.count(b"\x1b[H") >= 3).decode(errors="replace")
    assert out.count("\x1b[H") >= 3 and "\x1b[2J" not in out  # cursor home, no full clear: no flicker
    assert "Progress" in out


def _watch_until(watcher: subprocess.Popen, fd: int, enough) -> bytes:
    """What `status --watch` wrote to `fd` once `enough` of it came (or 20 s passed); then it is
    stopped. A busy machine can take seconds to start the command: a set time would not do."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: _read_all(fd, chunks), daemon=True)
    reader.start()
    try:
        wait_for(lambda: enough(b"".join(chunks)), timeout=20)
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        reader.join(2)
    return b"".join(chunks)


def _read_all(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        chunks.append(data)


def test_queue_wait_of_a_job_due_before_it_was_enqueued_counts_from_its_enqueue(manager):
    """A run_at years past is due at once: its wait is not those years."""
    manager.enqueue('{"command": "true", "run_at": "2000-01-01T00:00:00Z"}')
    worker = Worker(manager, "worker-1")
    try:
        worker.run_once()
    finally:
        worker.unregister()
    wait = manager.metrics()["queue_wait_ms"]
    assert wait["count"] == 1 and wait["max"] < 60_000, wait
