"""The Redis backend through the real `queuectl` command: every command, a password that never
shows, two "hosts" sharing one queue, a killed host's jobs recovered by the other, a Redis restart,
and attempt output that `queuectl logs` finds.

Every server here is a private redis-server on a free loopback port (tests/redis_server.py).
The contract, queue and worker suites also run on Redis (the `storage` fixture).
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from queuectl.core.backends import redis_backend
from queuectl.core.backends.redis_backend import parse_url
from queuectl.core.errors import StorageError
from queuectl.core.job import Job, JobState
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage

from conftest import Proc, queuectl_command, wait_for
from faultkit import run_until


class RedisProc(Proc):
    """Runs the real `queuectl` against one Redis URL (QUEUECTL_STORAGE_PATH)."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path)
        self.url = url
        self.env["QUEUECTL_STORAGE_PATH"] = url

    def manager(self) -> QueueManager:
        return QueueManager(get_storage(self.url))

    def counts(self) -> dict[str, int]:
        store = get_storage(self.url)
        try:
            return {s.value: n for s, n in store.counts().items()}
        finally:
            store.close()

    def start_as(self, host: str, *args: str) -> tuple[subprocess.Popen, Path]:
        """A `start` as another machine would run it: its own host id and working directory."""
        cwd = self.cwd / host
        cwd.mkdir(exist_ok=True)
        log_path = self.logs / f"{host}.log"
        env = dict(self.env, QUEUECTL_HOST_ID=host)
        with open(log_path, "ab") as log:
            p = subprocess.Popen(queuectl_command() + ["start", *args], cwd=cwd, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        return p, log_path


def prefix() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def stop_all(p: RedisProc, *starters: subprocess.Popen) -> None:
    if any(s.poll() is None for s in starters):
        p("stop")
    for s in starters:
        try:
            assert s.wait(timeout=30) == 0
        finally:
            if s.poll() is None:
                os.killpg(s.pid, signal.SIGKILL)


def test_every_command_works_on_redis(redis_server, tmp_path):
    url = redis_server.url(prefix=prefix())
    p = RedisProc(tmp_path, url)
    ok = p.enqueue("echo hello")
    bad = p.enqueue("exit 3", "--max-retries", "0")
    assert "Pending     2" in p("status").stdout
    assert f"storage_path = {url}\n" in p("config").stdout
    assert p("config", "set", "backoff-base", "3").stdout == "Set backoff_base = 3\n"
    assert p("config", "get", "backoff_base").stdout == "3\n"
    run = p("start", "--count", "2", "--timeout", "2")
    assert "Started 2 worker(s) for 2 seconds" in run.stdout
    assert "Run time of 2s is over" in run.stderr, run.stderr
    # the workers can take longer than those 2 s to start beside a busy suite: the jobs are waited for apart
    run_until(p, lambda: p.counts()["completed"] == 1 and p.counts()["dead"] == 1, count=2)
    assert p.counts() == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 1}
    assert ok[:8] in p("list", "--state", "completed").stdout
    dlq = p("dlq", "list").stdout
    assert bad in dlq and "Exit code 3" in dlq
    assert f"Job {bad} moved from DLQ to pending queue" in p("dlq", "retry", bad[:8]).stdout
    assert bad[:8] in p("list", "--state", "pending").stdout
    assert p("dlq", "retry", bad, check=False).returncode == 1
    assert not (tmp_path / "queuectl_data").exists()  # nothing local: the queue is in Redis


def test_queuectl_redis_url_applies_when_no_storage_path_is_given(redis_server, tmp_path):
    url = redis_server.url(prefix=prefix())
    p = RedisProc(tmp_path, url)
    del p.env["QUEUECTL_STORAGE_PATH"]
    p.env["QUEUECTL_REDIS_URL"] = url
    assert p("config", "get", "storage_path").stdout == url + "\n"
    p.enqueue("true")
    assert p.counts()["pending"] == 1
    local = str(tmp_path / "local")
    assert p("--storage-path", local, "config", "get", "storage_path").stdout == local + "\n"
    p.env["QUEUECTL_STORAGE_PATH"] = local
    assert p("config", "get", "storage_path").stdout == local + "\n"


def test_the_password_is_never_printed(redis_servers, tmp_path):
    secret = f"pw-{uuid.uuid4().hex}"
    server = redis_servers(password=secret)
    name = prefix()
    url = server.url(password=secret, prefix=name)
    p = RedisProc(tmp_path, url)
    printed = []

    def run(*args, **kw):
        result = p(*args, **kw)
        printed.append(result.stdout + result.stderr)
        return result

    shown = f"redis://***@127.0.0.1:{server.port}/0?prefix={name}"
    assert f"storage_path = {shown}\n" in run("config").stdout
    run("config", "set", "log_level", "DEBUG")
    run("enqueue", "echo fine")
    run("enqueue", "exit 4", "--max-retries", "0")
    printed.append(run_until(p, lambda: p.counts()["completed"] == 1 and p.counts()["dead"] == 1, count=1))
    run("dlq", "list")
    run("--storage-path", url, "config", "get", "storage_path")

    wrong = f"wrong-{uuid.uuid4().hex}"
    failures = {
        "wrong password": server.url(password=wrong, prefix=name),
        "no password": server.url(prefix=name),
        "nothing listening": f"redis://:{secret}@127.0.0.1:{_closed_port()}/0",
        "bad port": f"redis://:{secret}@127.0.0.1:notaport/0",
        "bad db": f"redis://:{secret}@127.0.0.1:{server.port}/x",
    }

    def fail(bad_url: str) -> subprocess.CompletedProcess:
        return subprocess.run(queuectl_command() + ["status"], env=dict(p.env, QUEUECTL_STORAGE_PATH=bad_url),
                              capture_output=True, text=True, timeout=30)

    started = time.monotonic()
    with ThreadPoolExecutor(len(failures)) as pool:
        results = dict(zip(failures, pool.map(fail, failures.values())))
    # each gives up after its 2 s of retries; a hang would run into each command's 30 s timeout (the
    # bound is loose: five commands at once beside a busy test run took 12 s once, a loaded CI more)
    assert time.monotonic() - started < 45
    for why, result in results.items():
        assert result.returncode == 1, why
        assert result.stdout == "" and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, why
        printed.append(result.stderr)
    assert "refused the credentials" in results["wrong password"].stderr
    assert "refused the credentials" in results["no password"].stderr
    assert "cannot reach Redis at 127.0.0.1:" in results["nothing listening"].stderr
    for text in printed:
        assert secret not in text and wrong not in text, text


def _closed_port() -> int:
    from redis_server import free_port
    return free_port()


def test_the_lease_is_set_by_the_url_and_bad_values_are_refused(redis_server):
    """`?lease=N`: each owner's key expires after N s (refreshed every N/4 s, at most 2 s), so its
    jobs come back that much sooner after it dies; the URL shown says so, the password never."""
    assert parse_url("redis://h/0")["lease"] == redis_backend.LEASE_SECONDS
    assert parse_url("redis://:pw@h:7/1?lease=3&prefix=q")["display"] == "redis://***@h:7/1?prefix=q&lease=3"
    assert parse_url("redis://h/0?lease=10")["display"] == "redis://h:6379/0"  # the default
    for bad in ("0", "1", "3601", "2.5", "-3", "x", "", "\u00b3"):
        with pytest.raises(StorageError, match="^invalid Redis URL: lease must be a whole number of seconds "
                                               "from 2 to 3600$"):
            parse_url(f"redis://h/0?lease={bad}")
    with pytest.raises(StorageError, match="^invalid Redis URL: the database must be a number"):
        parse_url("redis://h/\u00b3")  # a digit to str.isdigit, not to int()
    with pytest.raises(StorageError, match=r"unknown option\(s\) leases \(known: prefix, lease\)"):
        parse_url("redis://h/0?leases=3")
    store = get_storage(redis_server.url(prefix=prefix(), lease=3))
    try:
        store.register_owner("worker-short")
        ttl = redis_server.client().ttl(f"{store._p}owner:worker-short")
        assert 0 < ttl <= 3 and store._lease_refresh == 0.75
    finally:
        store.close()


@pytest.mark.parametrize("same_host", [True, False], ids=["same-host", "other-host"])
def test_a_dead_owners_job_is_recovered_after_its_lease(redis_server, monkeypatch, same_host):
    """In-process, with a 1 s lease: the lease, not a pid, decides; only the same host may kill."""
    monkeypatch.setattr(redis_backend, "LEASE_SECONDS", 1)
    monkeypatch.setattr(redis_backend, "LEASE_REFRESH", 0.2)
    url = redis_server.url(prefix=prefix())
    monkeypatch.setenv("QUEUECTL_HOST_ID", "host-a")
    dying = get_storage(url)
    monkeypatch.setenv("QUEUECTL_HOST_ID", "host-a" if same_host else "host-b")
    rescuer = get_storage(url)
    command = subprocess.Popen("sleep 30", shell=True, start_new_session=True)
    try:
        dying.register_owner("worker-doomed")
        dying.add(Job.new("sleep 30", 3, job_id="j"))
        job = QueueManager(dying).claim("worker-doomed")
        dying.note_running("worker-doomed", command.pid)
        assert QueueManager(rescuer).recover() == []  # alive: its lease is fresh
        dying._owners["worker-doomed"].stop()  # what a crash does: no more refreshes, no goodbye
        found: list = []
        assert wait_for(lambda: found.extend(QueueManager(rescuer).recover()) or found, timeout=5)
        assert [j.id for j in found] == ["j"]
        back = rescuer.get("j")
        assert back.state is JobState.PENDING and back.attempts == job.attempts == 1
        assert back.last_error == "Worker died during attempt 1"
        if same_host:
            assert command.wait(timeout=5) is not None  # its command was ended with it
        else:
            time.sleep(0.5)
            assert command.poll() is None  # another machine's process cannot be signalled
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
        command.wait()
        dying._owners.clear()
        dying.close()
        rescuer.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the command through /proc")
def test_a_command_its_dead_worker_had_not_noted_is_ended_on_the_same_host(redis_server, monkeypatch):
    """The worker died after its attempt started and its command was spawned, before it noted
    the command's group: the command carries the worker's mark, and recovery ends it."""
    from queuectl.core.utils.proc import group_alive, run_marks

    monkeypatch.setattr(redis_backend, "LEASE_SECONDS", 1)
    monkeypatch.setattr(redis_backend, "LEASE_REFRESH", 0.2)
    url = redis_server.url(prefix=prefix())
    monkeypatch.setenv("QUEUECTL_HOST_ID", "host-a")
    dying, rescuer = get_storage(url), get_storage(url)
    command = leftover = None
    try:
        dying.register_owner("worker-doomed")
        dying.add(Job.new("sleep 30", 3, job_id="j"))
        QueueManager(dying).claim("worker-doomed")
        # started as its worker starts it; an earlier attempt's leftover, marked 0, is not touched
        command = subprocess.Popen("sleep 30", shell=True, start_new_session=True,
                                   env={**os.environ, **run_marks("worker-doomed", "j", 1)})
        leftover = subprocess.Popen("sleep 30", shell=True, start_new_session=True,
                                    env={**os.environ, **run_marks("worker-doomed", "j", 0)})
        dying._owners["worker-doomed"].stop()  # dead before note_running
        found: list = []
        assert wait_for(lambda: found.extend(QueueManager(rescuer).recover()) or found, timeout=8)
        assert [j.id for j in found] == ["j"] and rescuer.get("j").attempts == 1
        assert command.wait(timeout=5) is not None and not group_alive(command.pid)
        assert leftover.poll() is None
    finally:
        for p in (command, leftover):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        dying._owners.clear()
        dying.close()
        rescuer.close()


@pytest.mark.slow
def test_two_hosts_drain_one_queue_and_recover_a_killed_host(redis_server, tmp_path):
    url = redis_server.url(prefix=prefix(), lease=3)  # host A's jobs come back 3 s after it dies
    p = RedisProc(tmp_path, url)
    marker = tmp_path / "marker"
    lines = [json.dumps({"id": f"job-{i:03d}", "command": f"echo job-{i:03d} >> {marker}"}) for i in range(200)]
    p("enqueue", "--file", "-", input="\n".join(lines))
    a, a_log = p.start_as("host-a", "--count", "2")
    b, b_log = p.start_as("host-b", "--count", "2")
    try:
        assert wait_for(lambda: p.counts()["completed"] == 200, timeout=60)
        seen = Counter(marker.read_text().split())
        assert len(seen) == 200 and set(seen.values()) == {1}
        assert all(j.attempts == 1 for j in p.manager().list_jobs())
        assert "completed in" in a_log.read_text() and "completed in" in b_log.read_text()

        # Four jobs that wait for a gate: each of the four workers takes one, however late it
        # comes (with 3-second sleepers, a worker slow to wake once let another finish its first
        # and take the fourth). Then host A dies, all at once, and the gate opens.
        sleeper, gate = tmp_path / "sleepers", tmp_path / "gate"
        p("enqueue", "--file", "-", input="\n".join(json.dumps(
            {"id": f"sleep-{i}", "command": f"until [ -e {gate} ]; do sleep 0.05; done; echo sleep-{i} >> {sleeper}"})
            for i in range(4)))
        assert wait_for(lambda: p.counts()["processing"] == 4, timeout=20)
        store = get_storage(url)
        held = {j.id: j.worker_id for j in store.jobs(JobState.PROCESSING)}
        on_a = {job_id for job_id, owner in held.items() if _parent(int(owner.split("-")[-2])) == a.pid}
        assert len(on_a) == 2, held
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        killed = time.monotonic()
        gate.touch()

        def moved() -> bool:
            return all(store.get(j).worker_id != held[j] for j in on_a)

        assert wait_for(moved, timeout=20, interval=0.2)
        assert time.monotonic() - killed < 8, "recovery must come within the lease bound (3 s + 1 s)"
        assert wait_for(lambda: p.counts()["completed"] == 204, timeout=20)
        for job_id in held:
            job = store.get(job_id)
            assert job.attempts == (2 if job_id in on_a else 1), job
        assert all(store.get(j).history[0]["error"] == "Worker died during attempt 1" for j in on_a)
        assert wait_for(lambda: p("status").stdout.count("Manager pid") == 1, timeout=5)
        assert set(sleeper.read_text().split()) == {f"sleep-{i}" for i in range(4)}
        store.close()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        stop_all(p, b)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@pytest.mark.slow
def test_a_redis_restart_loses_no_acknowledged_job(redis_servers, tmp_path):
    server = redis_servers("--appendonly", "yes", "--appendfsync", "always")
    url = server.url(prefix=prefix())
    p = RedisProc(tmp_path, url)
    marker = tmp_path / "marker"
    spec = lambda i: json.dumps({"id": f"job-{i:03d}", "command": f"sleep 0.1; echo job-{i:03d} >> {marker}"})  # noqa: E731
    p("enqueue", "--file", "-", input="\n".join(spec(i) for i in range(40)))
    starter, log_path = p.start_as("host-a", "--count", "2")
    try:
        assert wait_for(lambda: p.counts()["completed"] >= 5, timeout=20)
        for i in range(40, 50):  # each acknowledged (exit 0) just before Redis dies
            p("enqueue", spec(i))
        server.restart(down_for=1.0)  # SIGKILL: only what the AOF holds comes back
        store = get_storage(url)
        assert all(store.get(f"job-{i:03d}") is not None for i in range(50))
        assert wait_for(lambda: p.counts()["completed"] == 50, timeout=40)
        assert starter.poll() is None, "the workers rode out the restart"
        p("enqueue", spec(50))  # and the queue goes on
        assert wait_for(lambda: p.counts()["completed"] == 51, timeout=20)
        seen = Counter(marker.read_text().split())
        assert set(seen) == {f"job-{i:03d}" for i in range(51)}
        assert set(seen.values()) == {1}, seen.most_common(3)
        log = log_path.read_text()
        assert "Lost the connection to Redis" in log and "Reconnected to Redis" in log
        assert "exited unexpectedly" not in log and "Traceback" not in log
        store.close()
    finally:
        stop_all(p, starter)


def test_output_folder_is_private_and_shared_by_every_process(redis_server, tmp_path, monkeypatch):
    """Regression: the top folder was created readable by all, then judged unsafe, so each process
    wrote output to a one-off temp folder (never cleaned up) where no other process found it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a temp dir with no queuectl folder yet
    url = redis_server.url(prefix=prefix())
    first, second = get_storage(url), get_storage(url)
    try:
        top = tmp_path / f"queuectl-{os.getuid()}"
        out, _err = first.output_paths("j", 1)
        assert Path(out).parent.parent == top
        assert stat.S_IMODE(top.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(out).parent.stat().st_mode) == 0o700
        assert second.output_paths("j", 1) == first.output_paths("j", 1)

        top.chmod(0o755)  # as an earlier version left it: made private again, and used
        third = get_storage(url)
        assert third.output_paths("j", 1) == first.output_paths("j", 1)
        assert stat.S_IMODE(top.stat().st_mode) == 0o700
        third.close()
    finally:
        first.close()
        second.close()


def test_logs_shows_what_a_worker_wrote(redis_server, tmp_path):
    """`queuectl logs` in one process reads the output a worker process wrote, from a fresh TMPDIR."""
    p = RedisProc(tmp_path, redis_server.url(prefix=prefix()))
    p.env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    job = p.enqueue("echo hello from the worker")
    run_until(p, lambda: p.counts()["completed"] == 1, count=1)
    assert p("logs", job).stdout == "hello from the worker\n"
    assert not list((tmp_path / "tmp").glob("queuectl-output-*")), "output went to one-off folders"
