"""A signal sent to `start`'s whole process group (Ctrl+C, `kill -INT -PGID`) while a worker is
starting a command: posix_spawn moves the new process into its own session only after resetting
its signal handlers, with every signal blocked, so such a signal stays pending and ends it before
it runs anything. The worker starts such a command again, and only such a command."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from queuectl.core import worker as worker_module
from queuectl.core.job import JobState
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.utils.proc import killed_before_exec, spawn_shell

from conftest import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
_NULL = open(os.devnull, "wb")  # noqa: SIM115 - for the whole module's commands


def _exited(pid: int) -> None:
    assert wait_for(lambda: os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None,
                    timeout=10, interval=0.01)


def _dies_before_exec() -> int:
    """A child that a signal ends before it could exec anything, as the race leaves it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(99)
    return pid


def test_killed_before_exec_tells_a_command_that_never_ran_from_one_that_did():
    pid = _dies_before_exec()
    _exited(pid)
    assert killed_before_exec(pid) is True
    os.waitpid(pid, 0)

    ran = spawn_shell("kill -INT $$", _NULL, _NULL)  # killed after exec
    _exited(ran.pid)
    assert killed_before_exec(ran.pid) is False
    assert ran.wait() == -signal.SIGINT

    ok = spawn_shell("true", _NULL, _NULL)
    _exited(ok.pid)
    assert killed_before_exec(ok.pid) is False
    assert ok.wait() == 0

    running = spawn_shell("sleep 30", _NULL, _NULL)
    began = time.monotonic()
    assert killed_before_exec(running.pid, within=0.05) is False
    assert time.monotonic() - began < 5
    os.killpg(running.pid, signal.SIGKILL)
    running.wait()


@pytest.fixture
def json_worker(tmp_path):
    storage = get_storage(str(tmp_path / "data"))
    manager = QueueManager(storage)
    w = worker_module.Worker(manager, "worker-1")
    yield manager, w
    w.unregister()
    storage.close()


def test_a_command_a_group_signal_ended_before_it_ran_is_started_again(json_worker, tmp_path, monkeypatch):
    manager, w = json_worker
    marker = tmp_path / "marker"
    job = manager.enqueue(f"echo ran >> {marker}")
    real = worker_module.spawn_shell
    calls: list[str] = []

    def hit_by_ctrl_c(command, stdout, stderr, extra_env=None):
        calls.append(command)
        if len(calls) > 1:
            return real(command, stdout, stderr, extra_env)
        worker_module.group_signals[0] += 1  # what the worker's handler counts
        proc = real("sleep 30", _NULL, _NULL)  # stands in, then:
        os.killpg(proc.pid, signal.SIGKILL)
        pid = _dies_before_exec()  # the command as the race leaves it
        _exited(pid)
        proc.wait()
        proc.pid, proc.returncode = pid, None
        proc.stdout = proc.stderr = None
        return proc

    monkeypatch.setattr(worker_module, "SELECTABLE_PIPES", False)  # the stand-in has no pipes
    monkeypatch.setattr(worker_module, "spawn_shell", hit_by_ctrl_c)
    assert w.run_once() is True
    done = manager.storage.get(job.id)
    assert len(calls) == 2
    assert done.state is JobState.COMPLETED and done.attempts == 1, (done.state, done.last_error)
    assert marker.read_text() == "ran\n"


def test_a_command_ended_by_a_signal_after_it_started_is_not_run_again(json_worker, tmp_path, monkeypatch):
    manager, w = json_worker
    marker = tmp_path / "marker"
    job = manager.enqueue(f"echo ran >> {marker}; kill -INT $$", max_retries=0)
    real = worker_module.spawn_shell
    calls: list[str] = []

    def with_a_signal(command, stdout, stderr, extra_env=None):
        calls.append(command)
        worker_module.group_signals[0] += 1  # a group signal came while it started, but too late
        return real(command, stdout, stderr, extra_env)

    monkeypatch.setattr(worker_module, "spawn_shell", with_a_signal)
    assert w.run_once() is True
    done = manager.storage.get(job.id)
    assert len(calls) == 1
    assert done.state is JobState.DEAD and done.exit_code == -signal.SIGINT
    assert marker.read_text() == "ran\n"


WORKER = r"""
import signal, sys, threading
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core import worker as w
from queuectl.core.utils.proc import name_this_process
stop = threading.Event()
w.install_worker_signals(stop)  # as a pool's worker process does
name_this_process("queuectl-worker")
print("ready", flush=True)
storage = get_storage(sys.argv[1])
worker = w.Worker(QueueManager(storage), "worker-1", stop)
while worker.run_once():
    pass
worker.unregister()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlast the work
print("done", flush=True)
"""


@pytest.mark.slow
def test_no_command_dies_of_group_interrupts_while_jobs_start(tmp_path):
    """SIGINT to the worker's process group at random moments while it runs 300 jobs, the next
    only once two more jobs have run (so no start is hit twice in a row, as a person pressing
    Ctrl+C would not): before the worker started such commands again, a few to a tenth of them
    died of SIGINT."""
    path, marker = str(tmp_path / "data"), tmp_path / "marker"
    jobs = 300
    manager = QueueManager(get_storage(path))
    manager.enqueue_many([json.dumps({"command": f"echo . >> {marker}", "max_retries": 0})] * jobs)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, path], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = threading.Event()
    sent = [0]

    def ran() -> int:
        return marker.read_bytes().count(b"\n") if marker.exists() else 0

    def interrupt() -> None:
        rng = random.Random(4)
        while not finished.is_set():
            time.sleep(rng.uniform(0, 0.003))  # not in step with the jobs
            os.killpg(worker.pid, signal.SIGINT)
            sent[0] += 1
            before, deadline = ran(), time.monotonic() + 5
            while not finished.is_set() and ran() < before + 2 and time.monotonic() < deadline:
                time.sleep(0.0005)

    try:
        assert worker.stdout.readline().strip() == "ready"
        sender = threading.Thread(target=interrupt)
        sender.start()
        try:
            assert worker.stdout.readline().strip() == "done"
        finally:
            finished.set()
            sender.join()
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    counts = get_storage(path).counts()
    assert sent[0] >= 50
    assert counts[JobState.DEAD] == 0, worker.stderr.read()[-2000:]
    assert counts[JobState.COMPLETED] == jobs and ran() == jobs
