"""One worker iteration at a time (`run_once`), with real shell commands, on every backend."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from queuectl.core.errors import StorageError
from queuectl.core.job import JobState
from queuectl.core.queue import QueueManager
from queuectl.core.storage import Storage, get_storage
from queuectl.core.utils.proc import group_alive
from queuectl.core.worker import Worker

from conftest import wait_for


@pytest.fixture
def worker(manager):
    w = Worker(manager, "worker-1")
    yield w
    w.unregister()


def test_nothing_to_do_returns_false(worker):
    assert worker.run_once() is False


def test_a_job_completes(worker, manager, tmp_path):
    marker = tmp_path / "marker"
    job = manager.enqueue(f"echo done >> {marker}")
    assert worker.run_once() is True
    done = manager.storage.get(job.id)
    assert done.state is JobState.COMPLETED and done.attempts == 1
    assert marker.read_text() == "done\n"


def test_an_invalid_command_fails_cleanly_and_the_worker_goes_on(worker, manager):
    bad = manager.enqueue("invalid_command_xyz", max_retries=0)
    good = manager.enqueue("true")
    assert worker.run_once() and worker.run_once()
    dead = manager.storage.get(bad.id)
    assert dead.state is JobState.DEAD
    assert dead.last_error.startswith("Exit code 127: ") and "invalid_command_xyz" in dead.last_error
    assert manager.storage.get(good.id).state is JobState.COMPLETED


def test_last_error_holds_the_last_stderr_line(worker, manager):
    job = manager.enqueue("echo first >&2; echo; echo 'the last one' >&2; exit 3", max_retries=0)
    worker.run_once()
    assert manager.storage.get(job.id).last_error == "Exit code 3: the last one"


def test_the_worker_log_shows_job_text_escaped_one_line_a_record(worker, manager, caplog):
    """The worker's log goes to the terminal of `start`: a command or its stderr must not send
    it escape sequences (as `list` and `show` escape them), nor forge log lines with a newline."""
    command = "printf 'err \\033]0;pwned\\007 \\033[2J' >&2; exit 4\necho 'forged - INFO - line'"
    job = manager.enqueue(command, max_retries=0)
    with caplog.at_level(logging.INFO):
        worker.run_once()
    assert manager.storage.get(job.id).last_error == "Exit code 4: err \x1b]0;pwned\x07 \x1b[2J"
    lines = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [f"Job {job.id} started on worker-1", f"Job {job.id} failed"]
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\x07" not in line, line
    assert lines[0].endswith(
        ": printf 'err \\\\033]0;pwned\\\\007 \\\\033[2J' >&2; exit 4\\x0aecho 'forged - INFO - line'")
    assert "(Exit code 4: err \\x1b]0;pwned\\x07 \\x1b[2J)" in lines[1]


def test_a_timeout_kills_the_whole_process_group(worker, manager, tmp_path):
    manager.set_config("job_timeout", "1")
    pidfile = tmp_path / "pid"
    job = manager.enqueue(f"sleep 100 & echo $! > {pidfile}; sleep 100", max_retries=0)
    started = time.monotonic()
    worker.run_once()
    assert time.monotonic() - started < 6
    dead = manager.storage.get(job.id)
    assert dead.state is JobState.DEAD and dead.last_error == "Timed out after 1s"
    grandchild = int(pidfile.read_text())
    assert not _alive(grandchild)


def test_a_forced_stop_returns_the_job_uncounted(worker, manager):
    job = manager.enqueue("sleep 30")
    threading.Timer(0.5, worker.force_event.set).start()
    started = time.monotonic()
    worker.run_once()
    assert time.monotonic() - started < 5
    back = manager.storage.get(job.id)
    assert back.state is JobState.PENDING and back.attempts == 0


def test_run_stops_when_asked(worker, manager):
    manager.enqueue("true")
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        assert wait_for(lambda: manager.counts()[JobState.COMPLETED] == 1, timeout=30)
    finally:
        worker.stop_event.set()
    t.join(5)
    assert not t.is_alive()
    assert manager.counts()[JobState.COMPLETED] == 1


def test_the_running_commands_group_is_noted_for_recovery(json_store, tmp_path):
    manager = QueueManager(json_store)
    worker = Worker(manager, "worker-1")
    manager.enqueue("sleep 1")
    seen = []
    original = json_store.note_running

    def spy(owner, pgid, defer=False):
        seen.append(pgid)
        original(owner, pgid, defer)

    json_store.note_running = spy
    worker.run_once()
    worker.unregister()
    assert seen[0] and seen[-1] is None
    assert not group_alive(seen[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_a_stop_sent_while_start_was_starting_is_honoured(json_store, tmp_path):
    """`start` is slow to come up (imports, recovery); a `stop` sent meanwhile is for it."""
    from queuectl.core.worker import WorkerPool

    manager = QueueManager(json_store, str(tmp_path / "data"))
    launched = time.time()
    time.sleep(0.01)
    json_store.request_stop()  # after the launch, before the pool's own start time
    time.sleep(0.01)
    pool = WorkerPool(manager, 1, duration=30, launched_at=launched)
    began = time.monotonic()
    pool.run()
    assert time.monotonic() - began < 15, "the stop was missed: the pool ran until its duration"


def test_a_stop_older_than_the_launch_is_not_for_this_start(json_store, tmp_path):
    from queuectl.core.worker import WorkerPool

    manager = QueueManager(json_store, str(tmp_path / "data"))
    json_store.request_stop()
    time.sleep(0.01)
    pool = WorkerPool(manager, 1, duration=2, launched_at=time.time())
    began = time.monotonic()
    pool.run()
    assert time.monotonic() - began >= 1.9, "an old stop request stopped a new start"


def test_a_note_longer_than_its_first_size_reads_back_whole(tmp_path):
    from queuectl.core.utils import fs

    lock = fs.HeldLock(str(tmp_path / "owner.lock"))
    try:
        long_note = json.dumps({"done": {f"job-{i}": [1, "x" * 40] for i in range(100)}})
        lock.note(long_note)
        assert fs.probe_lock(str(tmp_path / "owner.lock"))[1] == long_note
        lock.note('{"job": "a"}')  # shorter: the longer one's tail must not show through
        assert json.loads(fs.probe_lock(str(tmp_path / "owner.lock"))[1]) == {"job": "a"}
    finally:
        lock.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_many_results_of_a_killed_worker_are_all_committed_by_recovery(tmp_path):
    """A fast worker lists up to a batch of uncommitted results in its note (well over 1 KB)."""
    from queuectl.core.backends import json_backend
    from queuectl.core.storage import get_storage

    path = str(tmp_path / "data")
    marker = tmp_path / "marker"
    store = get_storage(path)
    QueueManager(store).enqueue_many(json.dumps({"id": f"j{i:02d}", "command": f"echo j{i:02d} >> {marker}"})
                                     for i in range(30))
    store.close()
    pid = os.fork()
    if pid == 0:  # the worker: results stay uncommitted, then it dies without a word
        try:
            json_backend.COUNT_FLUSH_INTERVAL = float("inf")
            child = get_storage(path)
            worker = Worker(QueueManager(child), "worker-1")
            for _ in range(30):
                worker.run_once()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    store = get_storage(path)
    try:
        manager = QueueManager(store)
        manager.recover()
        assert {s.value: n for s, n in store.counts().items() if n} == {"completed": 30}
        assert sorted(marker.read_text().split()) == [f"j{i:02d}" for i in range(30)]  # none ran twice
    finally:
        store.close()


def test_a_held_result_is_written_once_the_next_command_has_started(worker, manager, tmp_path):
    """run_once(hold=True): a job that ended well is recorded while the next command runs;
    with nothing left to run, at once."""
    gate = tmp_path / "gate"
    first = manager.enqueue("true", priority=5)
    second = manager.enqueue(f"while [ ! -e {gate} ]; do sleep 0.01; done")
    holds = type(manager.storage).hold_result is not Storage.hold_result
    assert worker.run_once(hold=True) is True
    assert manager.storage.get(first.id).state is (JobState.PROCESSING if holds else JobState.COMPLETED)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (worker.run_once(hold=True), done.set()))
    thread.start()
    try:
        # the second command waits for the gate: by now the first result is written
        wait_for(lambda: manager.storage.get(second.id).state is JobState.PROCESSING and
                 manager.storage.get(first.id).state is JobState.COMPLETED, timeout=10)
        assert not done.is_set()
    finally:
        gate.touch()
        thread.join(10)
    first_done = manager.storage.get(first.id)
    assert first_done.attempts == 1 and first_done.history[-1]["exit_code"] == 0
    if holds:  # the second one is held now
        assert manager.storage.get(second.id).state is JobState.PROCESSING
        assert worker.run_once(hold=True) is True  # nothing to claim: the held result is written
    assert worker.run_once(hold=True) is False
    assert manager.storage.get(second.id).state is JobState.COMPLETED


def _note(store, owner: str) -> dict:
    with open(os.path.join(store.root, "owners", f"{owner}.lock")) as f:
        return json.loads(f.read())


def test_a_held_result_is_in_the_workers_note_until_it_is_written(json_store, tmp_path):
    """The note a recovery reads lists a held job as ended, from the hold until its result is
    written, and not after (a note that kept it would grow with every job)."""
    manager = QueueManager(json_store)
    gate = tmp_path / "gate"
    first = manager.enqueue("true", priority=5)
    second = manager.enqueue(f"while [ ! -e {gate} ]; do sleep 0.01; done")
    worker = Worker(manager, "worker-1")
    try:
        worker.register()
        json_store.begin_batching()
        assert worker.run_once(hold=True)
        note = _note(json_store, worker.owner)
        assert note["job"] == first.id and list(note["ended"]) == [first.id]
        attempt, started, ended = note["ended"][first.id]
        assert attempt == 1 and started == json_store.get(first.id).started_at and ended <= time.time()
        assert worker._held is not None and abs(ended - worker._held[1].finished) <= 1e-6
        thread = threading.Thread(target=worker.run_once, kwargs={"hold": True})
        thread.start()
        try:  # the second command runs: the first result is written, and gone from "ended"
            wait_for(lambda: _note(json_store, worker.owner).get("job") == second.id and
                     "ended" not in _note(json_store, worker.owner), timeout=10)
        finally:
            gate.touch()
            thread.join(10)
        assert list(_note(json_store, worker.owner)["ended"]) == [second.id]
        worker.record_held()
        assert "ended" not in _note(json_store, worker.owner)
    finally:
        worker.unregister()
    assert json_store.get(second.id).state is JobState.COMPLETED


def _written_notes(monkeypatch) -> list[dict]:
    """Every lock note written from now on, parsed."""
    from queuectl.core.utils import fs

    written: list[dict] = []
    original = fs.HeldLock.note

    def spy(self, text):
        written.append(json.loads(text))
        original(self, text)

    monkeypatch.setattr(fs.HeldLock, "note", spy)
    return written


def test_the_next_commands_group_is_noted_with_the_held_result(json_store, tmp_path, monkeypatch):
    """With a result held, the note that writes it also names the new command's process group:
    three note writes a job, not four, and no write in which the group is missing once noted."""
    from queuectl.core.backends import json_backend

    monkeypatch.setattr(json_backend, "COUNT_FLUSH_INTERVAL", float("inf"))  # no batch commit between
    manager = QueueManager(json_store)
    first = manager.enqueue("true", priority=5)
    second = manager.enqueue("true")
    worker = Worker(manager, "worker-1")
    try:
        worker.register()
        assert worker.run_once(hold=True)  # the first is held
        written = _written_notes(monkeypatch)
        assert worker.run_once(hold=True)  # the second runs while the first is written
    finally:
        worker.unregister()
    assert [n.get("job") for n in written[:3]] == [second.id, second.id, second.id]
    claim, with_group, ended = written[:3]
    assert "pgid" not in claim and first.id in claim["ended"]
    assert with_group["pgid"] > 0 and first.id in with_group["done"] and "ended" not in with_group
    assert "pgid" not in ended and list(ended["ended"]) == [second.id]
    assert all(json_store.get(j.id).state is JobState.COMPLETED for j in (first, second))


def test_the_group_is_noted_even_when_writing_the_held_result_fails(json_store, tmp_path, monkeypatch):
    from queuectl.core.backends import json_backend

    manager = QueueManager(json_store)
    manager.enqueue("true", priority=5)
    second = manager.enqueue("true")
    worker = Worker(manager, "worker-1")
    try:
        worker.register()
        assert worker.run_once(hold=True)
        written = _written_notes(monkeypatch)

        def full_disk(path, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(json_backend, "_rewrite", full_disk)
        with pytest.raises(StorageError):
            worker.run_once(hold=True)
        monkeypatch.undo()
    finally:
        worker.unregister()
    noted = [n for n in written if n.get("job") == second.id and n.get("pgid")]
    assert len(noted) == 1 and not noted[0]["done"]  # written by itself, the result being lost


def test_the_group_is_noted_again_when_the_note_carrying_it_could_not_be_written(json_store, monkeypatch):
    from queuectl.core.utils import fs

    manager = QueueManager(json_store)
    manager.enqueue("true", priority=5)
    second = manager.enqueue("true")
    worker = Worker(manager, "worker-1")
    written: list[dict] = []
    original = fs.HeldLock.note

    def note(self, text):
        data = json.loads(text)
        if data.get("pgid") and data["done"] and {"failed": True} not in written:
            written.append({"failed": True})
            raise OSError(5, "Input/output error")
        written.append(data)
        original(self, text)

    try:
        worker.register()
        assert worker.run_once(hold=True)
        monkeypatch.setattr(fs.HeldLock, "note", note)
        with pytest.raises(OSError):
            worker.run_once(hold=True)
        monkeypatch.undo()
    finally:
        worker.unregister()
    failed = written.index({"failed": True})
    after = written[failed + 1]
    assert after["job"] == second.id and after["pgid"] > 0  # written on its own after


def test_a_reader_in_the_workers_process_sees_a_held_jobs_attempt(json_store):
    manager = QueueManager(json_store)
    job = manager.enqueue("true")
    worker = Worker(manager, "worker-1")
    try:
        assert worker.run_once(hold=True)
        held = json_store.get(job.id)
        assert held.state is JobState.PROCESSING and held.attempts == 1 and held.started_at
        assert held.finished_at is None
    finally:
        worker.unregister()
    assert json_store.get(job.id).state is JobState.COMPLETED


def test_only_successes_are_held_and_a_failure_is_recorded_at_once(worker, manager):
    bad = manager.enqueue("exit 3", max_retries=0)
    assert worker.run_once(hold=True) is True
    assert manager.storage.get(bad.id).state is JobState.DEAD


def test_a_held_result_is_recorded_when_run_stops(worker, manager):
    job = manager.enqueue("true")
    stop = threading.Event()
    worker.stop_event = stop
    seen = []
    original = worker.run_once

    def once(hold: bool = False) -> bool:
        ran = original(hold=hold)
        if ran:
            seen.append(manager.storage.get(job.id).state)
            stop.set()  # stop right after the job ran, its result still held if the backend holds
        return ran

    worker.run_once = once  # type: ignore[method-assign]
    worker.run()
    assert manager.storage.get(job.id).state is JobState.COMPLETED
    assert seen and seen[0] in (JobState.PROCESSING, JobState.COMPLETED)


def test_output_lands_in_the_attempts_files(worker, manager):
    job = manager.enqueue("echo out; echo err >&2; echo more")
    assert worker.run_once() is True
    out, err = manager.storage.output_paths(job.id, 1)
    with open(out) as o, open(err) as e:
        assert (o.read(), e.read()) == ("out\nmore\n", "err\n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_process_looks_at_its_descriptors_again_before_its_first_command():
    """A forked child inherits what its parent opened, marks included: it starts over."""
    from queuectl.core.utils import proc

    proc._dev_null()
    assert "null" in proc._spawn_state
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's cleanup
        os.write(w, b"fresh" if "null" not in proc._spawn_state else b"stale")
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 16) == b"fresh"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_a_command_gets_only_the_standard_descriptors_and_the_environment(worker, manager, monkeypatch):
    """What Popen's close_fds gives: a descriptor the worker process was started with (as
    multiprocessing hands its workers some) does not leak into commands."""
    from queuectl.core.utils import proc

    monkeypatch.setenv("QUEUECTL_TEST_VALUE", "seen")
    leaky = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaky, True)
    monkeypatch.setattr(proc, "_spawn_state", {})  # as in a new process: its first command looks
    try:
        job = manager.enqueue('ls /proc/$$/fd; echo "$QUEUECTL_TEST_VALUE"; test -t 0 || cat')
        assert worker.run_once() is True
    finally:
        os.close(leaky)
    done = manager.storage.get(job.id)
    assert done.state is JobState.COMPLETED
    with open(manager.storage.output_paths(job.id, 1)[0]) as out:
        lines = out.read().split()
    assert lines == ["0", "1", "2", "seen"]  # stdin is empty: `cat` printed nothing


@pytest.mark.parametrize("spawn", ["posix_spawn", "popen"])
def test_a_command_knows_its_job_attempt_and_worker(worker, manager, monkeypatch, spawn):
    """QUEUECTL_JOB_ID, QUEUECTL_ATTEMPT and QUEUECTL_WORKER, on either way of starting it; the
    worker's own environment is left as it was."""
    from queuectl.core.utils import proc

    if spawn == "popen":
        monkeypatch.setattr(proc, "POSIX_SPAWN", False)
    job = manager.enqueue('echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $QUEUECTL_WORKER"; exit 1', max_retries=1)
    assert worker.run_once() is True
    manager.storage.update(*(lambda j: (j, j.evolve(due_at=0)))(manager.storage.get(job.id)))
    assert worker.run_once() is True
    outs = []
    for attempt in (1, 2):
        with open(manager.storage.output_paths(job.id, attempt)[0]) as out:
            outs.append(out.read().split())
    assert outs == [[job.id, "1", worker.owner], [job.id, "2", worker.owner]]
    assert "QUEUECTL_JOB_ID" not in os.environ


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_a_command_starts_with_default_signal_handling(worker, manager):
    """Workers ignore SIGINT (Ctrl+C is their parent's to handle); their commands must not."""
    from queuectl.core.utils import proc

    if not proc.POSIX_SPAWN:
        pytest.skip("Popen's fallback restores only SIGPIPE and SIGXFSZ")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job = manager.enqueue("kill -INT $$; sleep 1; echo survived", max_retries=0)
        assert worker.run_once() is True
    finally:
        signal.signal(signal.SIGINT, previous)
    dead = manager.storage.get(job.id)
    assert dead.state is JobState.DEAD and dead.last_error.startswith("Killed by signal 2")


def test_job_lines_are_printed_as_logging_prints_them(monkeypatch):
    import io
    import logging
    import re
    import sys

    from queuectl.core import worker as worker_module

    saved = logging.root.handlers[:]
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        worker_module.setup_logging("INFO")
        worker_module.log.info("Job %s completed in %.2fs", "abc", 0.5)
        with monkeypatch.context() as m:  # the direct path: logging is not called
            m.setattr(worker_module.log, "info", lambda *a: pytest.fail("went through logging"))
            worker_module.job_line("Job %s completed in %.2fs", "abc", 0.5)
        logging.root.addHandler(logging.NullHandler())  # another handler: through logging
        worker_module.job_line("Job %s started", "def")
    finally:
        logging.root.handlers[:] = saved
        worker_module._direct.clear()
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert len(lines) == 3 and all(re.match(stamp + " - queuectl.core.worker - INFO - Job ", x) for x in lines)
    assert lines[0][23:] == lines[1][23:] == " - queuectl.core.worker - INFO - Job abc completed in 0.50s"
    assert lines[2].endswith("INFO - Job def started")


def test_job_lines_are_kept_briefly_and_written_before_any_other_line(monkeypatch, tmp_path):
    """A worker's job lines are written together: while its command runs, before it waits for
    work, and before any line that goes through logging, so their order is kept."""
    import io
    import logging
    import sys

    from queuectl.core import worker as worker_module

    saved = logging.root.handlers[:]
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        worker_module.setup_logging("INFO")
        worker_module.job_line("Job %s started", "a")
        worker_module.job_line("Job %s completed in %.2fs", "a", 0.1)
        assert stream.getvalue() == ""  # kept
        worker_module.log.warning("Job %s failed", "b")
        worker_module.job_line("Job %s started", "c")
        worker_module.flush_lines()
        ran = stream.getvalue().splitlines()
        stream.seek(0)
        stream.truncate()
        # a real worker: a command that runs longer than the interval gets its start line out
        # while it runs, and the end line is out before the worker waits for more work
        manager = QueueManager(get_storage(str(tmp_path / "data")))
        job = manager.enqueue(f"sleep {worker_module.LINE_FLUSH_INTERVAL * 4}")
        worker = Worker(manager, "worker-1")
        seen_while_running = []
        original_wait = worker._wait

        def wait(*args, **kwargs):
            result = original_wait(*args, **kwargs)
            seen_while_running.append(stream.getvalue())
            return result

        worker._wait = wait
        stop = threading.Event()
        worker.stop_event = stop
        manager.storage.wait_for_work = lambda owner, timeout: (seen_before_idle.append(stream.getvalue()), stop.set())
        seen_before_idle: list[str] = []
        worker.run()
        manager.storage.close()
    finally:
        logging.root.handlers[:] = saved
        worker_module._direct.clear()
        worker_module._lines.clear()
    assert [line.split(" - ", 3)[3] for line in ran] == ["Job a started", "Job a completed in 0.10s",
                                                          "Job b failed", "Job c started"]
    assert f"Job {job.id} started" in seen_while_running[0]
    assert f"Job {job.id} completed" in seen_before_idle[0]


def test_job_lines_are_written_before_a_wait_for_the_rate_limit(monkeypatch, json_store):
    import io
    import logging
    import sys

    from queuectl.core import worker as worker_module

    saved = logging.root.handlers[:]
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    manager = QueueManager(json_store)
    manager.set_config("rate_limit", "1")
    first = manager.enqueue("true")
    manager.enqueue("true")
    seen_at_sleep: list[str] = []
    monkeypatch.setattr(worker_module.time, "sleep", lambda _s: seen_at_sleep.append(stream.getvalue()))
    monkeypatch.setattr(json_store, "take_start_slot", lambda rate: 0.0 if not seen_at_sleep else -1.0)
    worker = Worker(manager, "worker-1")
    try:
        worker_module.setup_logging("INFO")
        assert worker.run_once(hold=True)
        monkeypatch.setattr(json_store, "take_start_slot", lambda rate: 0.5 if not seen_at_sleep else 0.0)
        assert worker.run_once(hold=True)
    finally:
        worker.unregister()
        logging.root.handlers[:] = saved
        worker_module._direct.clear()
        worker_module._lines.clear()
    assert f"Job {first.id} started" in seen_at_sleep[0] and f"Job {first.id} completed" in seen_at_sleep[0]


def test_a_steady_drain_reuses_its_files_instead_of_freeing_them(tmp_path, monkeypatch):
    """Freed inodes slow every later file creation on ext4 without a journal; a worker keeps
    its finished jobs' files as spares for its next results, even with full batches."""
    from queuectl.core.backends import json_backend
    from queuectl.core.storage import get_storage

    monkeypatch.setattr(json_backend, "COUNT_FLUSH_INTERVAL", float("inf"))  # batches as big as a note allows
    store = get_storage(str(tmp_path / "data"))
    manager = QueueManager(store)
    manager.enqueue_many(json.dumps({"command": "true"}) for _ in range(200))
    freed = []  # from here on: the enqueue removes the name of its id table (see _link_ids)
    monkeypatch.setattr(json_backend, "_unlink", lambda path: freed.append(path))
    worker = Worker(manager, "worker-1")
    try:
        while worker.run_once():
            pass
        store.flush()
        assert manager.counts()[JobState.COMPLETED] == 200
        assert freed == []
    finally:
        worker.unregister()
        store.close()


def test_a_big_backlog_is_listed_once_per_many_claims(tmp_path, monkeypatch):
    """Each refresh of the candidates lists the whole backlog; a worker that kept only the best
    256 of 100,000 spent a millisecond a job listing. It keeps an eighth of the backlog."""
    from queuectl.core.backends import json_backend
    from queuectl.core.storage import get_storage

    store = get_storage(str(tmp_path / "data"))
    QueueManager(store).enqueue_many(json.dumps({"command": "true"}) for _ in range(6000))
    listings = []
    names = store._names
    monkeypatch.setattr(store, "_names", lambda sub: listings.append(sub) or names(sub))
    store.register_owner("w1")
    try:
        for _ in range(700):
            assert store.claim("w1", time.time()) is not None
    finally:
        store.close()
    assert listings.count("pending") == 1  # 750 kept; 256 would have meant three listings
    assert json_backend.CANDIDATE_BATCH < 700


BATCH_PROBE = r"""
import os, subprocess, sys
from queuectl.core.utils import proc
mode = sys.argv[1]
if mode == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
moved = proc.run_as_batch()
if mode == "popen":
    proc.POSIX_SPAWN = False
child = proc.spawn_shell(sys.executable + " -c 'import os; print(os.sched_getscheduler(0))'",
                         subprocess.PIPE, subprocess.PIPE)
out = child.stdout.fileno()
child.wait()
print(moved, os.read(out, 100).decode().strip(), os.sched_getscheduler(0))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize("mode, expected", [
    ("posix_spawn", "True {other} {batch}"),  # the worker is batch, its command is not
    ("popen", "True {other} {other}"),        # Popen cannot reset it: the worker leaves batch first
    ("idle", "False {idle} {idle}"),          # a policy the user chose is left alone
])
def test_a_worker_runs_as_batch_and_its_commands_do_not(mode, expected):
    """In a process of its own: the policy is the process's, and pytest's should stay as it is."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the suite itself does not run on the normal policy")
    out = subprocess.run([sys.executable, "-c", BATCH_PROBE, mode], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected.format(other=os.SCHED_OTHER, batch=os.SCHED_BATCH,
                                                 idle=os.SCHED_IDLE).split()


def test_a_worker_leaves_batch_when_a_command_may_not(monkeypatch):
    """If the child may not take the normal policy back, the worker leaves batch and starts it
    again; without a batch policy to leave, the error is the command's own."""
    from queuectl.core.utils import proc

    calls, refuse = [], {"batch"}

    def spawn(command, stdout, stderr, extra_env=None):
        calls.append(proc._command_policy[0])
        if ("batch" if proc._command_policy[0] is not None else "normal") in refuse:
            raise PermissionError(1, "Operation not permitted")
        return "started"

    monkeypatch.setattr(proc, "_posix_spawn_shell", spawn)
    monkeypatch.setattr(proc, "POSIX_SPAWN", True)
    monkeypatch.setattr(proc, "_command_policy", [(0, "normal")])
    monkeypatch.setattr(os, "sched_setscheduler", lambda *args: None, raising=False)
    assert proc.spawn_shell("true", subprocess.PIPE, subprocess.PIPE) == "started"
    assert calls == [(0, "normal"), None] and proc._command_policy == [None]
    refuse.add("normal")
    with pytest.raises(PermissionError):
        proc.spawn_shell("true", subprocess.PIPE, subprocess.PIPE)
    assert calls[2:] == [None]
