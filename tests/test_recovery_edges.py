"""Recovery edge cases of the JSON store, each reached by killing a forked process at a chosen
fault point (queuectl/core/utils/faults.py) and then recovering from another process."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest

from queuectl.core.errors import DuplicateJobError
from queuectl.core.job import JobState
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.worker import Worker

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _in_child(path: str, body: Callable[[QueueManager], None], fault: str | None = None) -> int:
    """Runs `body` in a forked child on its own storage; returns the wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            from queuectl.core.backends import json_backend
            from queuectl.core.utils import faults
            json_backend.COUNT_FLUSH_INTERVAL = float("inf")  # results commit where the body says
            faults.arm(fault)
            body(QueueManager(get_storage(path)))
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def _folders(path: str) -> dict[str, list[str]]:
    """Job ids per state folder, as on disk."""
    out: dict[str, list[str]] = {}
    for state in JobState:
        folder = Path(path) / state.value
        for name in os.listdir(folder) if folder.is_dir() else ():
            if not name.startswith("."):
                out.setdefault(json.loads((folder / name).read_bytes())["id"], []).append(state.value)
    return out


def _store(tmp_path: Path, *specs: dict) -> str:
    path = str(tmp_path / "data")
    store = get_storage(path)
    QueueManager(store).enqueue_many(json.dumps(s) for s in specs)
    store.close()
    return path


def test_a_failed_result_committed_just_before_the_kill_is_not_run_again(tmp_path):
    """Killed between the commit's two renames (the result in failed/, its old copy still in
    processing/): recovery drops the copy instead of counting a death and queueing it twice."""
    path = _store(tmp_path, {"id": "x", "command": "exit 3", "max_retries": 2})

    def work(m: QueueManager) -> None:
        Worker(m).run_once()
        m.storage.flush()

    assert os.WTERMSIG(_in_child(path, work, "rename.done:2")) == signal.SIGKILL  # 1: claim
    store = get_storage(path)
    try:
        QueueManager(store).recover()
        assert _folders(path) == {"x": ["failed"]}
        job = store.get("x")
        assert job.attempts == 1 and job.last_error.startswith("Exit code 3") and len(job.history) == 1
    finally:
        store.close()


@pytest.mark.parametrize("then", ["retry", "purge"])
def test_a_stale_copy_whose_result_moved_on_is_not_brought_back(tmp_path, then):
    """Killed between the commit's two renames, a worker leaves its old copy in processing/
    beside its result in dead/. If `dlq retry` or `dlq purge` acts on the result before any
    recovery runs, recovery must drop the copy: not queue the job twice, not bring back a
    purged one (found in review)."""
    path = _store(tmp_path, {"id": "x", "command": "exit 3", "max_retries": 0})

    def work(m: QueueManager) -> None:
        Worker(m).run_once()
        m.storage.flush()

    assert os.WTERMSIG(_in_child(path, work, "rename.done:2")) == signal.SIGKILL  # 1: claim
    assert sorted(_folders(path)["x"]) == ["dead", "processing"]
    store = get_storage(path)
    try:
        m = QueueManager(store)
        if then == "retry":
            m.retry_dead("x")
        else:
            m.purge_dead("x")
        m.recover()
        assert _folders(path) == ({"x": ["pending"]} if then == "retry" else {})
        if then == "retry":
            assert not [h for h in store.get("x").history if "Worker died" in (h.get("error") or "")]
    finally:
        store.close()


def test_a_job_retaken_but_not_started_keeps_its_own_error(tmp_path):
    """The owner's note named the job from its earlier attempt; a death before the new start
    is recorded must not be counted against it."""
    path = _store(tmp_path, {"id": "x", "command": "echo boom >&2; exit 3", "max_retries": 2})

    def work(m: QueueManager) -> None:
        worker = Worker(m)
        worker.run_once()
        m.storage.flush()
        failed = m.storage.get("x")
        m.storage.update(failed, failed.evolve(due_at=0.0))  # due again at once
        m.storage.claim(worker.owner, 1e12)  # taken again; then the worker dies

    assert _in_child(path, work) == 0
    store = get_storage(path)
    try:
        QueueManager(store).recover()
        job = store.get("x")
        assert job.state in (JobState.PENDING, JobState.FAILED)
        assert job.attempts == 1 and job.last_error == "Exit code 3: boom" and len(job.history) == 1
    finally:
        store.close()


def _died_once(store, job_id: str) -> None:
    """The job is pending again, its one attempt counted and its death on record."""
    job = store.get(job_id)
    assert job.state is JobState.PENDING and job.attempts == 1
    assert [h["error"] for h in job.history] == ["Worker died during attempt 1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the command through /proc")
def test_a_worker_killed_before_writing_the_held_result_that_carries_the_group_is_recovered(tmp_path):
    """With a result held, the next command's group is noted only in the write of that result.
    Killed just before it: the held job is completed from the note's "ended" (it does not run
    again), and the running command, in no note, is found by its marks and ended."""
    import time

    from queuectl.core.utils.proc import group_alive

    pidfile = tmp_path / "pid"
    marker = tmp_path / "marker"
    path = _store(tmp_path, {"id": "first", "command": f"echo first >> '{marker}'", "priority": 9},
                  {"id": "long", "command": f"echo $$ > '{pidfile}.tmp'; mv '{pidfile}.tmp' '{pidfile}'; "
                                            "sleep 60"})
    pid = os.fork()
    if pid == 0:
        try:
            from queuectl.core.backends import json_backend

            def die_before_writing(self, src, old, new):
                while not pidfile.exists():  # the next command is up, its group not noted
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGKILL)

            worker = Worker(QueueManager(get_storage(path)))
            worker.run_once(hold=True)
            json_backend.JsonStorage._queue_commit = die_before_writing
            worker.run_once(hold=True)
        finally:
            os._exit(1)
    assert os.WTERMSIG(os.waitpid(pid, 0)[1]) == signal.SIGKILL
    command = int(pidfile.read_text())
    try:
        store = get_storage(path)
        try:
            assert group_alive(command)
            QueueManager(store).recover()
            first = store.get("first")
            assert first.state is JobState.COMPLETED and first.attempts == 1
            _died_once(store, "long")
        finally:
            store.close()
        assert not group_alive(command)
        assert marker.read_text().split() == ["first"]
    finally:
        try:
            os.killpg(command, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _recovered_with_its_death(store, job_id: str) -> None:
    QueueManager(store).recover()
    _died_once(store, job_id)


def _worker_on_cue(path: str, first: Callable[[Worker], object], job_id: str) -> tuple[int, int]:
    """Forks a worker that does `first`, then waits for a cue to claim `job_id` and die
    (SIGKILL) holding it, its attempt noted. Returns its pid and the cue's write end."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            from queuectl.core.backends import json_backend
            json_backend.COUNT_FLUSH_INTERVAL = float("inf")  # results stay uncommitted, in the note
            m = QueueManager(get_storage(path))
            worker = Worker(m)
            first(worker)
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            assert m.claim(worker.owner).id == job_id
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.read(ready_r, 1)
    for fd in (ready_r, ready_w, go_r):
        os.close(fd)
    return pid, go_w


def _cue_before_its_lock_is_taken(monkeypatch, pid: int, go_w: int) -> Callable:
    """The next take of a worker's stale lock first lets the forked worker claim and die, as if
    that happened just after the caller listed processing/. Returns the real take_stale_lock."""
    from queuectl.core.utils import fs

    take = fs.take_stale_lock

    def cued_take(lock_path: str):
        if os.path.basename(lock_path).startswith("worker-") and pid not in done:
            done.add(pid)
            os.write(go_w, b"x")
            os.close(go_w)
            assert os.WTERMSIG(os.waitpid(pid, 0)[1]) == signal.SIGKILL
        return take(lock_path)

    done: set[int] = set()
    monkeypatch.setattr(fs, "take_stale_lock", cued_take)
    return take


def test_a_job_claimed_after_recovery_listed_the_folder_is_recovered_in_that_pass(tmp_path, monkeypatch):
    """Seen in the chaos test: a recovery lists processing/ while a worker is alive; the worker
    claims and starts another job, then dies before the recovery reaches it. Its note names that
    job, and the note goes with the lock file when the recovery is done with the worker, so the
    job must be recovered in the same pass: its attempt counted, its death on record."""
    path = _store(tmp_path, {"id": "a", "command": "true", "priority": 10}, {"id": "b", "command": "true"})
    pid, go_w = _worker_on_cue(path, lambda w: w.run_once(), "b")  # a ran, its result uncommitted
    assert _folders(path).get("a") == ["processing"]
    _cue_before_its_lock_is_taken(monkeypatch, pid, go_w)
    store = get_storage(path)
    try:
        QueueManager(store).recover()
        assert _folders(path) == {"a": ["completed"], "b": ["pending"]}
        _died_once(store, "b")
    finally:
        store.close()


def test_the_lock_sweep_keeps_the_note_of_a_worker_that_claimed_after_its_listing(tmp_path, monkeypatch):
    """The sweep of lock files left by dead CLI calls lists processing/ first. A worker idle at
    that moment claims and starts a job, then dies before the sweep takes its lock: its note
    (the attempt, the process group) must stay for recovery, not go as a stray lock file."""
    from queuectl.core.utils import fs

    path = _store(tmp_path, {"id": "j", "command": "true"})
    pid, go_w = _worker_on_cue(path, lambda w: w.register(), "j")
    take = _cue_before_its_lock_is_taken(monkeypatch, pid, go_w)
    store = get_storage(path)
    try:
        QueueManager(store).recover()  # nothing to recover at its listing; then the sweep
        monkeypatch.setattr(fs, "take_stale_lock", take)
        _recovered_with_its_death(store, "j")
    finally:
        store.close()


def test_closing_a_store_keeps_the_note_of_an_owner_that_still_holds_a_job(tmp_path):
    """A worker whose last flush failed closes its store still holding a started job; the lock
    file and its note stay, so recovery counts the attempt that ran."""
    path = _store(tmp_path, {"id": "j", "command": "true"})
    store = get_storage(path)
    m = QueueManager(store)
    worker = Worker(m)
    worker.register()
    assert m.claim(worker.owner).id == "j"
    store.close()
    store = get_storage(path)
    try:
        _recovered_with_its_death(store, "j")
    finally:
        store.close()


def test_one_unrecoverable_file_does_not_hold_up_the_others(tmp_path):
    path = _store(tmp_path, {"id": "good", "command": "true"}, {"id": "other", "command": "true"})
    owner = "worker-host-1-deadbeef"
    pending = Path(path) / "pending"
    for name in os.listdir(pending):
        job = json.loads((pending / name).read_bytes())
        target = "good" if job["id"] == "good" else "mismatch"
        os.rename(pending / name, Path(path) / "processing" / f"{owner}__{target}.json")
    store = get_storage(path)
    try:
        recovered = QueueManager(store).recover()
        assert [j.id for j in recovered] == ["good"]
        assert os.listdir(Path(path) / "quarantine"), "the file holding another job is set aside"
        assert not os.listdir(Path(path) / "processing")
    finally:
        store.close()


def test_an_id_of_a_committed_batch_is_not_given_out_again(tmp_path):
    """`enqueue --file` killed right after its commit point: its jobs exist (rolled forward),
    and a new enqueue of one of their ids is refused, not stored twice."""
    path = str(tmp_path / "data")
    get_storage(path).close()
    specs = [json.dumps({"id": f"b-{i}", "command": "true"}) for i in range(3)]
    status = _in_child(path, lambda m: m.enqueue_many(specs), "rename.done:1")  # the folder's rename
    assert os.WTERMSIG(status) == signal.SIGKILL
    store = get_storage(path)
    try:
        with pytest.raises(DuplicateJobError):
            QueueManager(store).enqueue(json.dumps({"id": "b-0", "command": "echo again"}))
        assert _folders(path) == {f"b-{i}": ["pending"] for i in range(3)}
    finally:
        store.close()


def test_an_id_of_a_batch_killed_before_its_commit_is_free_again(tmp_path):
    path = str(tmp_path / "data")
    get_storage(path).close()
    specs = [json.dumps({"id": f"b-{i}", "command": "true"}) for i in range(3)]
    status = _in_child(path, lambda m: m.enqueue_many(specs), "stage.written:2")
    assert os.WTERMSIG(status) == signal.SIGKILL
    store = get_storage(path)
    try:
        QueueManager(store).enqueue(json.dumps({"id": "b-0", "command": "echo again"}))
        assert _folders(path) == {"b-0": ["pending"]}
    finally:
        store.close()


def test_notes_in_the_older_long_form_are_still_recovered(tmp_path):
    """Before notes were shortened, a result's entry named its spare file in full and always
    gave its destination; a store left by a worker of that version recovers the same way."""
    marker = tmp_path / "marker"
    path = _store(tmp_path, *({"id": f"j{i}", "command": f"echo j{i} >> {marker}"} for i in range(3)))

    def work(manager: QueueManager) -> None:
        worker = Worker(manager, "worker-1")
        for _ in range(3):
            worker.run_once()  # results written, none committed: then the process ends unregistered

    assert _in_child(path, work) == 0
    [lock] = (Path(path) / "owners").glob("*.lock")
    owner = lock.name[:-len(".lock")]
    note = json.loads(lock.read_text())
    assert sorted(note["done"]) == ["j0", "j1", "j2"]
    for job_id, entry in note["done"].items():
        spare = Path(path) / "tmp" / f".{owner}.{entry[1]}.spare"
        assert spare.exists()
        seq = json.loads(spare.read_bytes())["seq"]
        note["done"][job_id] = [entry[0], spare.name, entry[2], f"{seq}_{job_id}.json"]
    lock.write_text(json.dumps(note))

    QueueManager(get_storage(path)).recover()
    assert _folders(path) == {f"j{i}": ["completed"] for i in range(3)}
    assert sorted(marker.read_text().split()) == ["j0", "j1", "j2"]  # none ran twice


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the command through /proc")
def test_a_command_started_but_not_yet_noted_is_ended_before_its_job_runs_again(tmp_path):
    """A worker process killed after starting a command and before noting its process group
    leaves the command running with no note to find it by. The command carries its attempt's
    marks in its environment, so recovery ends it: the job never runs twice at once."""
    import threading
    import time

    from queuectl.core.utils.proc import group_alive

    pidfile = tmp_path / "pid"
    path = _store(tmp_path, {"id": "long", "command": f"echo $$ > '{pidfile}.tmp'; mv '{pidfile}.tmp' '{pidfile}'; "
                                                     "sleep 60"})
    pid = os.fork()
    if pid == 0:
        try:
            from queuectl.core.backends.json_backend import JsonStorage
            from queuectl.core.worker import WorkerSettings, _worker_main

            def die_before_noting(self, owner, pgid, defer=False):
                if pgid:
                    os.kill(os.getpid(), signal.SIGKILL)

            JsonStorage.note_running = die_before_noting
            _worker_main(WorkerSettings(path, "worker-1", "ERROR"), threading.Event(), threading.Event())
        finally:
            os._exit(1)
    assert os.WTERMSIG(os.waitpid(pid, 0)[1]) == signal.SIGKILL
    deadline = time.monotonic() + 30
    while not pidfile.exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    command = int(pidfile.read_text())
    try:
        assert group_alive(command)  # it runs on, its worker gone
        store = get_storage(path)
        try:
            _recovered_with_its_death(store, "long")
        finally:
            store.close()
        assert not group_alive(command)
    finally:
        try:
            os.killpg(command, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _id_markers(path: str) -> dict[str, os.stat_result]:
    ids = Path(path) / "ids"
    return {name: os.stat(ids / name) for name in os.listdir(ids)}


def test_a_bulk_enqueue_links_its_ids_to_shared_tables(tmp_path):
    """One inode per 1,000 ids instead of one (and a block) per id; every id still resolves,
    and deleting a job removes only its own link."""
    from queuectl.core.backends import json_backend
    specs = [{"id": f"t-{i}", "command": f"echo {i}"} for i in range(2 * json_backend.TABLE_JOBS + 500)]
    path = _store(tmp_path, *specs)
    markers = _id_markers(path)
    assert len(markers) == len(specs)
    links = sorted({(m.st_ino, m.st_nlink) for m in markers.values()}, key=lambda t: t[1])
    assert [n for _, n in links] == [500, json_backend.TABLE_JOBS, json_backend.TABLE_JOBS]
    assert not [n for n in os.listdir(Path(path) / "tmp") if n.startswith(".ids-")]
    store = get_storage(path)
    try:
        for i in range(0, len(specs), 97):
            job = store.get(f"t-{i}")
            assert job is not None and job.command == f"echo {i}"
        first, second = store.get("t-1"), store.get("t-10")
        assert first.seq < second.seq
        store.delete(first)
        assert store.get("t-1") is None and store.get("t-10") == second
        assert os.stat(Path(path) / "ids" / "t-10").st_nlink == json_backend.TABLE_JOBS - 1
    finally:
        store.close()


def test_bulk_ids_are_marker_files_where_links_are_refused(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    path = _store(tmp_path, *({"id": f"f-{i}", "command": "true"} for i in range(5)))
    markers = _id_markers(path)
    assert len({m.st_ino for m in markers.values()}) == 5 and {m.st_nlink for m in markers.values()} == {1}
    assert not [n for n in os.listdir(Path(path) / "tmp") if n.startswith(".ids-")]
    store = get_storage(path)
    try:
        assert [store.get(f"f-{i}").id for i in range(5)] == [f"f-{i}" for i in range(5)]
    finally:
        store.close()


def test_a_bulk_enqueue_that_meets_a_taken_id_leaves_no_marker_behind(tmp_path):
    path = _store(tmp_path, {"id": "x2", "command": "echo first"})
    store = get_storage(path)
    try:
        with pytest.raises(DuplicateJobError):
            QueueManager(store).enqueue_many(json.dumps({"id": f"x{i}", "command": "true"}) for i in range(1, 4))
        assert sorted(_id_markers(path)) == ["x2"]
        assert not [n for n in os.listdir(Path(path) / "tmp") if n.startswith(".ids-")]
        assert store.get("x2").command == "echo first" and store.get("x1") is None
    finally:
        store.close()


def test_an_id_held_by_a_bulk_enqueue_still_claiming_ids_is_not_given_out_again(tmp_path):
    """While one `enqueue --file` has linked its ids but not yet staged its jobs, another
    enqueue of one of those ids must be refused, not take the marker for a stale one (found in
    review: both stored a job under the same id). Once the first has died, the id is free."""
    from queuectl.core.job import Job
    path = str(tmp_path / "data")
    first = get_storage(path)
    jobs = [Job.new("true", 0, job_id=f"h-{i}") for i in range(3)]
    batch = f".batch-{first._own_cli_owner()}.0123456789ab"  # as add_many names it
    first._link_ids(jobs, [], batch)  # where a slow add_many is: ids linked, no file written yet
    second = get_storage(path)
    try:
        with pytest.raises(DuplicateJobError):
            QueueManager(second).enqueue_many([json.dumps({"id": "h-1", "command": "echo again"})])
        with pytest.raises(DuplicateJobError):
            QueueManager(second).enqueue(json.dumps({"id": "h-2", "command": "echo again"}))
        first.close()  # the first enqueue is gone: its ids are stale
        QueueManager(second).enqueue_many([json.dumps({"id": "h-1", "command": "echo again"})])
        assert second.get("h-1").command == "echo again" and _folders(path) == {"h-1": ["pending"]}
    finally:
        second.close()


def test_jobs_of_a_bulk_enqueue_whose_results_were_lost_all_run_again(tmp_path):
    """A worker died with three results written but not committed, and the results are gone
    (a power cut): each job runs again, the last one of its id table too (found in review:
    recovery read that one's id marker as naming another job, and removed the job)."""
    path = _store(tmp_path, *({"id": f"j{i}", "command": "true"} for i in range(3)))

    def work(m: QueueManager) -> None:
        worker = Worker(m)
        for _ in range(3):
            worker.run_once()  # results written to spares, not committed (see _in_child)

    assert _in_child(path, work) == 0
    spares = [n for n in os.listdir(Path(path) / "tmp") if n.endswith(".spare")]
    assert len(spares) == 3
    for name in spares:
        os.unlink(Path(path) / "tmp" / name)
    store = get_storage(path)
    try:
        QueueManager(store).recover()
        assert _folders(path) == {f"j{i}": ["pending"] for i in range(3)}
        assert all(store.get(f"j{i}").attempts == 1 for i in range(3))  # the lost attempt counts
    finally:
        store.close()


@pytest.mark.parametrize("data, expected", [
    (b"42", 42), (b"42\n", 42), (b"#\n7 a\n8 b1\n9 xb1\n", 8), (b"#\n9 xb1\n8 b1\n", 8),
    (b"#\n9 xb1\n8 b1", 8), (b"#.batch-cli-x.0123456789ab\n8 b1\n", 8),
    (b"#\n7 a\n", None), (b"", None), (b"garbage", None), (b"#\nnot-a-number b1\n", None),
])
def test_an_id_marker_gives_its_sequence(data, expected):
    from queuectl.core.backends.json_backend import _marker_seq
    assert _marker_seq(data, "b1") == expected


def test_each_step_of_a_batch_move_is_on_disk_before_the_next(tmp_path, monkeypatch):
    """For file systems that keep no order between folders: the commit (the `.commit` name in
    tmp/) is synced before the first job moves into pending/, and the moves are synced before
    the batch's folder is removed, both when `enqueue --file` moves its own batch and when a
    later call rolls a killed one forward."""
    from queuectl.core.backends import json_backend
    from queuectl.core.utils import fs

    steps: list[str] = []
    real_sync, real_rename, real_rmdir = fs.fsync_dir, json_backend._rename, json_backend._rmdir
    monkeypatch.setattr(fs, "fsync_dir", lambda p: (steps.append("sync " + os.path.basename(p)), real_sync(p)))
    monkeypatch.setattr(json_backend, "_rename", lambda a, b: (steps.append(
        "move" if os.path.basename(os.path.dirname(b)) == "pending" else "rename"), real_rename(a, b)))
    monkeypatch.setattr(json_backend, "_rmdir", lambda p: (steps.append("rmdir"), real_rmdir(p)))

    path = _store(tmp_path, *({"id": f"j{i}", "command": "true"} for i in range(3)))
    moves = [s for s in steps if s != "rename"]
    assert moves == ["sync tmp", "move", "move", "move", "sync pending", "rmdir"], steps

    # a batch committed by a process killed before its moves: the next `enqueue --file` rolls it on
    tmp = Path(path) / "tmp"
    folder = tmp / ".batch-cli-gone.0123456789ab.commit"
    folder.mkdir()
    store = get_storage(path)
    try:
        job = QueueManager(store).build_job(json.dumps({"id": "late", "command": "true"}))
        (folder / f".{store._name(job)}.tmp").write_bytes(job.to_json())
        steps.clear()
        QueueManager(store).enqueue_many([json.dumps({"id": "next", "command": "true"})])
        assert [s for s in steps if s != "rename"][:4] == ["sync tmp", "move", "sync pending", "rmdir"], steps
        assert _folders(path)["late"] == ["pending"] and _folders(path)["next"] == ["pending"]
    finally:
        store.close()


@pytest.mark.parametrize("code, falls_back", [("EINVAL", True), ("EOPNOTSUPP", True), ("EIO", False)])
def test_a_folder_sync_a_file_system_refuses_falls_back_to_sync(tmp_path, monkeypatch, code, falls_back):
    import errno

    from queuectl.core.utils import fs

    synced: list[bool] = []

    def refuse(_fd: int) -> None:
        raise OSError(getattr(errno, code), "refused")

    monkeypatch.setattr(os, "fsync", refuse)
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    if falls_back:
        fs.fsync_dir(str(tmp_path))
        assert synced == [True]
    else:
        with pytest.raises(OSError):
            fs.fsync_dir(str(tmp_path))
        assert synced == []


def test_a_batch_that_fails_after_its_commit_says_so_and_is_moved_on_later(tmp_path, monkeypatch):
    """Past the commit point the jobs are kept: the error says so (a blind rerun would store the
    id-less ones twice), and the next `enqueue --file` moves them into the queue."""
    import errno

    from queuectl.core.errors import StorageError
    from queuectl.core.utils import fs

    path = _store(tmp_path, {"id": "first", "command": "true"})
    real_sync = fs.fsync_dir

    def failing(p: str) -> None:
        if os.path.basename(p) == "pending":
            raise OSError(errno.EIO, "I/O error")
        real_sync(p)

    monkeypatch.setattr(fs, "fsync_dir", failing)
    store = get_storage(path)
    try:
        with pytest.raises(StorageError, match="committed"):
            QueueManager(store).enqueue_many([json.dumps({"id": f"b{i}", "command": "true"}) for i in range(3)])
        monkeypatch.setattr(fs, "fsync_dir", real_sync)
        QueueManager(store).enqueue_many([json.dumps({"id": "after", "command": "true"})])
        assert {i: f for i, f in _folders(path).items()} == {
            i: ["pending"] for i in ("first", "b0", "b1", "b2", "after")}
        assert not [n for n in os.listdir(Path(path) / "tmp") if n.startswith(".batch-")]
    finally:
        store.close()


@pytest.mark.parametrize("entry, recorded", [
    pytest.param(None, True, id="as written"),
    pytest.param([1, "2026-01-01T00:00:00.000Z", 1e300], False, id="end past any date"),
    pytest.param([1, "2026-01-01T00:00:00.000Z", float("nan")], False, id="end not a number"),
    pytest.param([1, "yesterday", 1767225601.5], False, id="start not a time"),
    pytest.param([0, "2026-01-01T00:00:00.000Z", 1767225601.5], False, id="attempt zero"),
    pytest.param("ok", False, id="not a list"),
])
def test_a_held_result_is_recovered_from_the_note_and_a_damaged_entry_is_ignored(tmp_path, entry, recorded):
    """A worker that held `a`'s result (see `Storage.hold_result`) and died as `b` started:
    recovery records `a` completed from the note, and only once. A damaged entry is not taken
    for a time (json.loads reads NaN and 1e300 as floats); recovery then goes on without it."""
    marker = tmp_path / "marker"
    path = _store(tmp_path, {"id": "a", "command": f"echo a >> {marker}", "priority": 5},
                  {"id": "b", "command": f"echo b >> {marker}; sleep 30"})

    def work(manager: QueueManager) -> None:
        worker = Worker(manager, "worker-1")
        worker.run_once(hold=True)
        worker.register()
        manager.storage.claim(worker.owner, 0.0)  # `b` is taken, nothing is recorded of it yet
        os.kill(os.getpid(), signal.SIGKILL)

    assert os.WIFSIGNALED(_in_child(path, work))
    [lock] = (Path(path) / "owners").glob("*.lock")
    note = json.loads(lock.read_text())
    assert list(note["ended"]) == ["a"]
    if entry is not None:
        note["ended"]["a"] = entry
        lock.write_text(json.dumps(note))
    QueueManager(get_storage(path)).recover()
    folders = _folders(path)
    assert folders["b"] == ["pending"]
    if recorded:
        job = json.loads(next((Path(path) / "completed").glob("*_a.json")).read_bytes())
        assert job["attempts"] == 1 and [h["exit_code"] for h in job["history"]] == [0]
        assert job["history"][0]["finished_at"] == job["finished_at"]
    else:  # the note still names `a`'s attempt: cut short, as if the worker died while it ran
        assert folders["a"] == ["pending"]
        job = json.loads(next((Path(path) / "pending").glob("*_a.json")).read_bytes())
        assert [h["error"] for h in job["history"]] == ["Worker died during attempt 1"]
    assert marker.read_text().split() == ["a"]


def test_a_job_given_back_by_a_forced_stop_stays_uncounted_when_its_worker_dies_before_the_commit(tmp_path):
    """`release` writes the attempt back uncounted; a worker killed before its batch committed
    that left the result in its spare, and recovery takes it as it is, not as a death."""
    path = _store(tmp_path, {"id": "a", "command": "true", "max_retries": 0})

    def work(manager: QueueManager) -> None:
        worker = Worker(manager, "worker-1")
        worker.register()
        job = manager.claim(worker.owner)
        manager.release(job, "Interrupted by a forced stop")
        os.kill(os.getpid(), signal.SIGKILL)

    assert os.WIFSIGNALED(_in_child(path, work))
    QueueManager(get_storage(path)).recover()
    assert _folders(path) == {"a": ["pending"]}
    job = json.loads(next((Path(path) / "pending").glob("*_a.json")).read_bytes())
    assert job["attempts"] == 0 and [h.get("counted") for h in job["history"]] == [False]
    assert job["history"][0]["error"] == "Interrupted by a forced stop"


def test_an_owner_writing_results_unbatched_does_not_keep_naming_the_job_in_its_note(tmp_path):
    """A store that does not batch writes each result at once; its owner's note must then stop
    naming the job, or its next claim of the same job takes that attempt for the current one."""
    import time

    from queuectl.core.job import now_iso

    path = _store(tmp_path, {"id": "x", "command": "exit 1", "max_retries": 5})
    stores = [get_storage(path), get_storage(path)]
    try:
        for store, owner in zip(stores, ("w1", "w2")):
            store.register_owner(owner)
        for store, owner in zip(stores, ("w1", "w2")):  # attempts 1 and 2, each failed
            job = store.claim(owner, time.time() + 3600)
            started = job.evolve(attempts=job.attempts + 1, started_at=now_iso(), worker_id=owner)
            store.update(job, started)
            store.update(started, started.evolve(state=JobState.FAILED, finished_at=now_iso(), worker_id=None))
        again = stores[0].claim("w1", time.time() + 3600)
        assert again.id == "x" and again.attempts == 2
    finally:
        for store in stores:
            store.close()


def test_a_killed_reuse_of_an_id_marker_leaves_its_temp_file_where_the_sweep_looks(tmp_path):
    """An id marker whose enqueue died before its job landed is reused by the next enqueue of
    that id; killed while rewriting it, that enqueue leaves a temp file in tmp/, which start's
    housekeeping removes, and none in ids/, which it does not search."""
    from queuectl.core.backends import json_backend

    path = _store(tmp_path, {"id": "other", "command": "true"})
    (Path(path) / "ids" / "reused").write_text("12345")  # an enqueue died before its job landed

    def enqueue(manager: QueueManager) -> None:
        manager.enqueue(json.dumps({"id": "reused", "command": "true"}))

    assert os.WIFSIGNALED(_in_child(path, enqueue, "write.before_replace:1"))
    assert [n for n in os.listdir(Path(path) / "ids") if n.endswith(".tmp")] == []
    # the marker's temp file, and the job the enqueue had staged before marking its id
    left = [Path(path) / "tmp" / n for n in os.listdir(Path(path) / "tmp") if n.startswith(".reused.")]
    assert len(left) == 2 and all(p.name.endswith(".tmp") for p in left)
    for p in left:
        old = p.stat().st_mtime - json_backend.TEMP_MAX_AGE - 1
        os.utime(p, (old, old))
    store = get_storage(path)
    try:
        store.maintain()
        assert not any(p.exists() for p in left)
        QueueManager(store).enqueue(json.dumps({"id": "reused", "command": "true"}))
        assert store.get("reused") is not None
    finally:
        store.close()


def test_a_unique_key_write_killed_midway_leaves_a_temp_file_that_start_removes(tmp_path):
    """Reserving a unique key rewrites its file in unique/: killed before the rename, the
    enqueue leaves a temp file there, and start's housekeeping looks in unique/ too. It does
    not list the history folders, where no write makes a temp file."""
    from queuectl.core.backends import json_backend

    path = _store(tmp_path, {"id": "other", "command": "true"})

    def submit(manager: QueueManager) -> None:
        manager.submit(json.dumps({"id": "keyed", "command": "true"}), unique_key="nightly")

    assert os.WIFSIGNALED(_in_child(path, submit, "write.before_replace:1"))
    left = [Path(path) / "unique" / n for n in os.listdir(Path(path) / "unique") if n.endswith(".tmp")]
    assert len(left) == 1, os.listdir(Path(path) / "unique")
    old = left[0].stat().st_mtime - json_backend.TEMP_MAX_AGE - 1
    os.utime(left[0], (old, old))
    assert {"completed", "dead", "pending", "failed", "ids"}.isdisjoint(json_backend.TEMP_FOLDERS)
    store = get_storage(path)
    try:
        store.maintain()
        assert not left[0].exists()
        job, existing = QueueManager(store).submit(json.dumps({"id": "keyed", "command": "true"}),
                                                   unique_key="nightly")
        assert not existing and job.id == "keyed"
    finally:
        store.close()


def _paused_at_marking(ready: Path, go: Path) -> None:
    """In a forked child: the next single enqueue stops right after marking its id until `go`."""
    import time

    from queuectl.core.backends import json_backend

    def pause(name: str) -> None:
        if name == "id.marked":
            ready.touch()
            deadline = time.monotonic() + 10
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    json_backend.fault = pause


def _slow_takeover(ready: Path, go: Path) -> None:
    """In a forked child: taking over a stale id marker stops before the write until `go`."""
    import time

    from queuectl.core.utils import fs

    write_file = fs.write_file

    def slow(path: str, *args, **kwargs) -> None:
        if os.sep + "ids" + os.sep in path:
            ready.touch()
            deadline = time.monotonic() + 10
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        write_file(path, *args, **kwargs)

    fs.write_file = slow


def _wait_for_file(path: Path) -> None:
    import time

    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists()


@pytest.mark.parametrize("marker", ["new", "stale"])
def test_a_second_enqueue_of_an_id_whose_first_is_still_placing_its_job_is_refused(tmp_path, marker):
    """Between marking the id (a new marker, or one taken over from an enqueue that died) and
    renaming its job into place, an enqueue's marker has no job beside it; a second enqueue of
    the same id must not take it for a stale one."""
    path = _store(tmp_path, {"id": "other", "command": "true"})
    if marker == "stale":
        (Path(path) / "ids" / "same").write_text("12345")  # an enqueue died before its job landed
    ready, go = tmp_path / "ready", tmp_path / "go"
    pid = os.fork()
    if pid == 0:
        try:
            _paused_at_marking(ready, go)
            QueueManager(get_storage(path)).enqueue(json.dumps({"id": "same", "command": "echo first"}))
        finally:
            os._exit(0)
    try:
        _wait_for_file(ready)
        store = get_storage(path)
        try:
            with pytest.raises(DuplicateJobError):
                QueueManager(store).enqueue(json.dumps({"id": "same", "command": "echo second"}))
        finally:
            store.close()
    finally:
        go.touch()
        os.waitpid(pid, 0)
    assert _folders(path) == {"other": ["pending"], "same": ["pending"]}
    job = json.loads(next((Path(path) / "pending").glob("*_same.json")).read_bytes())
    assert job["command"] == "echo first"


def test_of_two_enqueues_retrying_an_id_left_by_a_dead_one_exactly_one_wins(tmp_path):
    """Both find the marker of an enqueue that died; takeovers go one at a time, so the second
    finds the marker naming the first, which still places its job, and is refused: one job,
    never none and never two."""
    import time

    path = _store(tmp_path, {"id": "other", "command": "true"})
    (Path(path) / "ids" / "x").write_text("12345 .x.1-0123456789ab.tmp")  # its holder is gone
    ready, go = tmp_path / "ready", tmp_path / "go"
    codes = []
    pids = []
    for n in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if n == 0:
                    _slow_takeover(ready, go)
                try:
                    QueueManager(get_storage(path)).enqueue(json.dumps({"id": "x", "command": f"echo {n}"}))
                    code = 0
                except DuplicateJobError:
                    code = 3
            finally:
                os._exit(code)
        pids.append(pid)
        if n == 0:
            _wait_for_file(ready)  # the first found the marker stale and is about to take it over
    time.sleep(0.3)  # the second meets the marker meanwhile
    go.touch()
    for pid in pids:
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    assert codes == [0, 3]
    assert _folders(path) == {"other": ["pending"], "x": ["pending"]}
    assert json.loads(next((Path(path) / "pending").glob("*_x.json")).read_bytes())["command"] == "echo 0"


def test_the_staged_file_of_a_dead_enqueue_does_not_hold_its_id(tmp_path):
    """The marker names the staged file of an enqueue that died before its job landed: no
    process holds that file's lock, so the next enqueue of the id takes the marker over."""
    path = _store(tmp_path, {"id": "other", "command": "true"})
    staged = ".x.1-0123456789ab.tmp"
    (Path(path) / "ids" / "x").write_text(f"12345 {staged}")
    (Path(path) / "tmp" / staged).write_text("{}")
    store = get_storage(path)
    try:
        QueueManager(store).enqueue(json.dumps({"id": "x", "command": "true"}))
        assert store.get("x") is not None
    finally:
        store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tells the groups apart through /proc")
@pytest.mark.parametrize("member, ended", [
    pytest.param("started before the note", True, id="started-before-the-note"),
    pytest.param("started later, with the worker's mark", True, id="later-with-mark"),
    pytest.param("started later, unmarked", False, id="later-unmarked"),
])
def test_recovery_signals_a_noted_group_only_while_it_is_the_dead_workers_command(tmp_path, member, ended):
    """A note can name a process group whose command has ended (the worker died before its next
    note), and the number can belong to another process's group by the time recovery reads it.
    Recovery ends the group only if a member carries the worker's mark or started before the
    note was written; a later, unmarked group is a stranger's and is left alone."""
    import subprocess
    import time

    from queuectl.core.utils.proc import group_alive, run_marks

    owner = "worker-noted-1"
    path = _store(tmp_path, {"id": "j", "command": "true"})
    env = {**os.environ, **run_marks(owner, "j", 1)} if "mark" in member and "unmarked" not in member else None
    group = subprocess.Popen(["sleep", "30"], start_new_session=True, env=env)
    try:
        def noted_then_killed(m: QueueManager) -> None:
            m.storage.register_owner(owner)
            m.claim(owner)
            m.storage.note_running(owner, group.pid)
            os.kill(os.getpid(), signal.SIGKILL)

        assert os.WTERMSIG(_in_child(path, noted_then_killed)) == signal.SIGKILL
        if member != "started before the note":
            lock = Path(path) / "owners" / f"{owner}.lock"
            then = time.time() - 30  # the note is older than the group: the group came later
            os.utime(lock, (then, then))
        store = get_storage(path)
        try:
            _recovered_with_its_death(store, "j")
        finally:
            store.close()
        assert group_alive(group.pid) is not ended, member
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
        group.wait()


@pytest.mark.parametrize("value", ["job-1", 'say "hi"\n', "é", 0, 7, -3, 0.1, 1796633867.109648, 1e16, 1e-7, 123.0,
                                   -0.0, float("nan"), float("inf"), None, [1, "x", 2.5]])
def test_a_lock_note_encodes_each_value_as_json_does(value):
    """Notes are encoded field by field for speed; recovery parses them with json."""
    from queuectl.core.backends.json_backend import _json_value

    assert _json_value(value) == json.dumps(value)
