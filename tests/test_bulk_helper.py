"""A big `enqueue --file` writes its batch's files from a helper process while it links the ids
(see `JsonStorage.add_many` and queuectl/core/utils/helper.py): the batch stays all or nothing
whatever the helper or its caller does.

A helper is never forked from a process with threads, and pytest-xdist's workers have one:
each case runs its enqueue in a forked child of its own, which has a single thread.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from queuectl.core.backends import json_backend
from queuectl.core.errors import DuplicateJobError
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.utils import faults, fs, helper

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or fs._syncfs() is None,
                                reason="needs fork and syncfs")

BIG = json_backend.HELPER_MIN_JOBS + 200


def _specs(n: int, prefix: str = "b") -> list[str]:
    return [json.dumps({"id": f"{prefix}-{i:05d}", "command": "true"}) for i in range(n)]


def _in_child(body: Callable[[], Any], fault: str | None = None) -> tuple[int, Any]:
    """Runs `body` in a forked child (one thread); returns its wait status and what it
    returned, or the exception it raised (as its type name and message)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            faults.arm(fault)
            try:
                out: Any = ("ok", body())
            except BaseException as e:
                out = ("raised", type(e).__name__, str(e))
            os.write(write_end, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    status = os.waitpid(pid, 0)[1]
    return status, pickle.loads(data) if data else None


def _enqueue(path: str, specs: list[str]) -> Callable[[], Any]:
    def body() -> Any:
        store = get_storage(path)
        try:
            return [j.id for j in QueueManager(store).enqueue_many(specs)]
        finally:
            store.close()
    return body


def _pending_ids(path: str) -> list[str]:
    folder = Path(path) / "pending"
    return sorted(json.loads((folder / n).read_bytes())["id"] for n in os.listdir(folder) if not n.startswith("."))


def _leftovers(path: str) -> list[str]:
    """What a batch may leave in tmp/: its folder, id tables."""
    return [n for n in os.listdir(Path(path) / "tmp") if n.startswith((".batch-", ".ids-"))]


def _no_children() -> bool:
    """Whether this process has no child left, running or unreaped."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _before_writes(monkeypatch, when: Callable[[str], bool], act: Callable[[], None]) -> None:
    """Makes `act()` run before each file write whose path `when` accepts (in the helper too,
    which inherits the patch)."""
    real_write = fs.write_private

    def write(p, data, durable=False):
        if when(p):
            act()
        return real_write(p, data, durable)
    monkeypatch.setattr(fs, "write_private", write)


def _gated(gate: Path, after: int) -> Callable[[], None]:
    """An action for `_before_writes`: from the write after the `after`-th on (each process
    counting its own), waits while the file `gate` exists."""
    seen = [0]

    def act() -> None:
        seen[0] += 1
        while seen[0] > after and gate.exists():
            time.sleep(0.005)
    return act


def _job_file(p: str) -> bool:
    return f"{os.sep}.batch-" in p


def _enospc() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def path(tmp_path) -> str:
    p = str(tmp_path / "data")
    get_storage(p).close()
    return p


def test_a_big_batch_is_written_by_a_helper_and_lands_whole_in_order(path, tmp_path, monkeypatch):
    writers = tmp_path / "writers"
    writers.mkdir()

    def note(p: str) -> bool:
        if _job_file(p):
            (writers / f"{os.getpid()}-{os.path.basename(p)}").touch()
        return False
    _before_writes(monkeypatch, note, lambda: None)

    def body() -> Any:
        return _enqueue(path, _specs(BIG))(), os.getpid()
    status, out = _in_child(body)
    assert status == 0 and out[0] == "ok", out
    ids, enqueuer = out[1]
    assert ids == [f"b-{i:05d}" for i in range(BIG)]
    pids = {int(n.split("-", 1)[0]) for n in os.listdir(writers)}
    assert len(pids) == 1 and pids.isdisjoint((enqueuer, os.getpid())), pids  # one helper wrote them all
    assert len(os.listdir(writers)) == BIG
    assert _pending_ids(path) == [f"b-{i:05d}" for i in range(BIG)]
    assert not _leftovers(path)
    store = get_storage(path)
    try:
        assert store.counts()[json_backend.PENDING] == BIG
        assert [store.claim("t", time.time()).id for _ in range(BIG)] == [f"b-{i:05d}" for i in range(BIG)]
        assert store.claim("t", time.time()) is None
    finally:
        store.close()


def _staged_files(path: str) -> int:
    tmp = Path(path) / "tmp"
    try:
        return sum(len(os.listdir(tmp / n)) for n in os.listdir(tmp) if n.startswith(".batch-"))
    except FileNotFoundError:  # no store yet, or the batch folder went meanwhile
        return 0


@pytest.fixture
def existing(path) -> str:
    """A store that exists (made by a setting), into which a batch streams."""
    store = get_storage(path)
    try:
        store.save_config({})
    finally:
        store.close()
    assert os.path.isdir(Path(path) / "pending")
    return path


def test_the_helper_writes_while_later_lines_are_still_checked(existing):
    """Into a store that exists, the helper starts once the first lines are checked: the line
    after the first table waits here until the helper has written files."""
    path = existing
    specs = _specs(BIG)

    def lines() -> Any:
        for n, spec in enumerate(specs):
            if n == json_backend.HELPER_MIN_JOBS + 100:
                deadline = time.monotonic() + 20
                while _staged_files(path) < 100 and time.monotonic() < deadline:
                    time.sleep(0.01)
                yield json.dumps({"id": "seen-files", "command": "true"}) if _staged_files(path) >= 100 else spec
            yield spec

    status, out = _in_child(_enqueue(path, lines()))  # type: ignore[arg-type]
    assert status == 0 and out[0] == "ok", out
    assert "seen-files" in out[1] and len(out[1]) == BIG + 1
    assert len(_pending_ids(path)) == BIG + 1 and not _leftovers(path)


def test_a_bad_line_found_while_the_helper_writes_stores_nothing(existing):
    path = existing
    specs = _specs(BIG)
    specs[json_backend.HELPER_MIN_JOBS + 150] = '{"id":"bad","command":7}'

    def body() -> Any:
        try:
            return _enqueue(path, specs)()
        finally:
            assert _no_children(), "the helper is reaped"

    status, out = _in_child(body)
    assert status == 0 and out[:2] == ("raised", "ValidationError"), out
    assert out[2].startswith(f"line {json_backend.HELPER_MIN_JOBS + 151}: "), out
    assert not _pending_ids(path) and not _leftovers(path) and not os.listdir(Path(path) / "ids")


def test_a_new_store_is_made_only_once_every_line_is_checked(tmp_path):
    path = str(tmp_path / "new")
    specs = _specs(BIG)
    specs[-1] = "{not json"
    status, out = _in_child(_enqueue(path, specs))
    assert out[:2] == ("raised", "ValidationError"), out
    assert not os.path.exists(path)


def test_a_helper_that_fails_fails_the_batch_and_stores_nothing(path, monkeypatch):
    _before_writes(monkeypatch, lambda p: p.endswith("00900.json.tmp"), _enospc)

    status, out = _in_child(_enqueue(path, _specs(BIG)))
    assert status == 0 and out[:2] == ("raised", "StorageError"), out
    assert "no space left on device" in out[2], out
    assert not _pending_ids(path) and not _leftovers(path)
    assert not os.listdir(Path(path) / "ids")  # every id free again
    monkeypatch.undo()
    status, out = _in_child(_enqueue(path, _specs(BIG)))  # and the same batch goes in after
    assert out[0] == "ok" and len(_pending_ids(path)) == BIG, out


def test_a_helper_that_dies_fails_the_batch_and_stores_nothing(path, monkeypatch):
    _before_writes(monkeypatch, lambda p: p.endswith("00900.json.tmp"), lambda: os.kill(os.getpid(), signal.SIGKILL))

    status, out = _in_child(_enqueue(path, _specs(BIG)))
    assert status == 0 and out[:2] == ("raised", "StorageError"), out
    assert f"a helper process died (signal {int(signal.SIGKILL)})" in out[2], out
    assert not _pending_ids(path) and not _leftovers(path) and not os.listdir(Path(path) / "ids")


def test_a_refused_batch_stops_its_helper_before_removing_its_files(path, tmp_path, monkeypatch):
    """A duplicate id is found while the helper still writes (held after 100 files here): the
    enqueue ends the helper first, or files written after the folder's removal would be left."""
    _in_child(_enqueue(path, [json.dumps({"id": "taken", "command": "true"})]))
    gate = tmp_path / "gate"
    gate.touch()
    _before_writes(monkeypatch, _job_file, _gated(gate, 100))

    def body() -> Any:
        out = _enqueue(path, _specs(BIG) + [json.dumps({"id": "taken", "command": "echo again"})])
        try:
            return out()
        finally:
            assert _no_children(), "the helper is reaped"

    status, out = _in_child(body)
    gate.unlink()  # a helper left running would go on writing now
    assert status == 0 and out[:2] == ("raised", "DuplicateJobError"), out
    time.sleep(0.2)
    assert _pending_ids(path) == ["taken"] and not _leftovers(path)
    assert os.listdir(Path(path) / "ids") == ["taken"]


def test_a_batch_whose_enqueue_is_killed_while_its_helper_writes_is_swept(path, tmp_path, monkeypatch):
    """The enqueue dies (SIGKILL) while its helper writes: the helper finishes and exits, the
    batch counts as dead from then on, the same batch goes in again (its ids taken over from
    the dead one's markers, its files written by a helper of its own) and the dead batch is
    swept."""
    gate = tmp_path / "gate"
    gate.touch()
    _before_writes(monkeypatch, _job_file, _gated(gate, 100))
    pid = os.fork()
    if pid == 0:
        try:
            _enqueue(path, _specs(BIG))()
        finally:
            os._exit(0)
    tmp = Path(path) / "tmp"

    def staged() -> int:
        try:
            return sum(len(os.listdir(tmp / n)) for n in os.listdir(tmp) if n.startswith(".batch-"))
        except FileNotFoundError:  # not created yet
            return 0
    deadline = time.monotonic() + 30
    # killed once every job is sent to the helper (its id is linked right after)
    while (staged() < 100 or len(os.listdir(Path(path) / "ids")) < BIG) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    monkeypatch.undo()
    store = get_storage(path)
    try:
        folder = next(n for n in os.listdir(tmp) if n.startswith(".batch-"))
        assert staged() == 100 and store._batch_alive(folder), "the helper is alive, held at 100 files"
        gate.unlink()
        deadline = time.monotonic() + 30
        while store._batch_alive(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert staged() == BIG, "the helper finished its files after its enqueue died"
        assert not store._batch_alive(folder)
    finally:
        store.close()
    status, out = _in_child(_enqueue(path, _specs(BIG)))
    assert out == ("ok", [f"b-{i:05d}" for i in range(BIG)]), out[:2]
    store = get_storage(path)
    try:
        store.maintain()
    finally:
        store.close()
    assert not [n for n in _leftovers(path) if n.startswith(".batch-")]
    assert _pending_ids(path) == [f"b-{i:05d}" for i in range(BIG)]


def test_a_helper_reaped_by_the_kernel_is_still_known_dead(path, monkeypatch):
    """With SIGCHLD ignored (inherited from a parent that ignores it), `waitpid` cannot tell a
    killed helper from a clean exit: the missing "ok" on its pipe does."""
    _before_writes(monkeypatch, lambda p: p.endswith("00900.json.tmp"), lambda: os.kill(os.getpid(), signal.SIGKILL))

    def body() -> Any:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        return _enqueue(path, _specs(BIG))()

    status, out = _in_child(body)
    assert status == 0 and out[:2] == ("raised", "StorageError"), out
    assert "a helper process died (its exit status is unknown)" in out[2], out
    assert not _pending_ids(path) and not _leftovers(path) and not os.listdir(Path(path) / "ids")


def test_a_batch_committed_before_the_kill_is_rolled_forward(path):
    """Killed right after the commit point (the folder's rename): the next `enqueue --file`
    moves every job the helper wrote on."""
    status, _out = _in_child(_enqueue(path, _specs(BIG)), "rename.done:1")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not _pending_ids(path)
    status, out = _in_child(_enqueue(path, _specs(1, prefix="next")))
    assert out == ("ok", ["next-00000"]), out
    assert _pending_ids(path) == sorted([f"b-{i:05d}" for i in range(BIG)] + ["next-00000"])
    assert not _leftovers(path)
    store = get_storage(path)
    try:
        with pytest.raises(DuplicateJobError):  # the ids stay taken
            QueueManager(store).enqueue(json.dumps({"id": "b-01000", "command": "true"}))
    finally:
        store.close()


def test_without_fork_the_enqueue_writes_the_batch_itself(path, tmp_path, monkeypatch):
    monkeypatch.setattr(helper, "FORK", False)
    writers = tmp_path / "writers"
    writers.mkdir()
    _before_writes(monkeypatch, _job_file, lambda: (writers / str(os.getpid())).touch())

    def body() -> Any:
        return _enqueue(path, _specs(BIG))(), os.getpid()
    status, out = _in_child(body)
    assert out[0] == "ok" and out[1][0] == [f"b-{i:05d}" for i in range(BIG)], out[:2]
    assert os.listdir(writers) == [str(out[1][1])]  # the enqueue's own process, no other
    assert _pending_ids(path) == [f"b-{i:05d}" for i in range(BIG)]
    assert not _leftovers(path)


# -- the helper itself ---------------------------------------------------------------------

def test_join_raises_the_helpers_error_with_its_errno():
    def body() -> Any:
        def work() -> None:
            raise OSError(errno.EROFS, "Read-only file system")
        h = helper.start_helper(work)
        assert h is not None
        try:
            h.join()
        except OSError as e:
            return e.errno, e.strerror
        return None
    _status, out = _in_child(body)
    assert out == ("ok", (errno.EROFS, "Read-only file system"))


def test_join_reports_a_helper_that_raised_something_else_or_was_killed():
    def body() -> Any:
        results = []
        for work in (lambda: 1 / 0, lambda: os.kill(os.getpid(), signal.SIGKILL), lambda: None):
            h = helper.start_helper(work)
            try:
                h.join()
                results.append("ok")
            except OSError as e:
                results.append(e.strerror)
        return results
    _status, out = _in_child(body)
    assert out == ("ok", ["ZeroDivisionError: division by zero",
                          f"a helper process died (signal {int(signal.SIGKILL)})", "ok"]), out


def test_cancel_ends_a_running_helper_and_reaps_it():
    def body() -> Any:
        h = helper.start_helper(lambda: time.sleep(30))
        t0 = time.monotonic()
        h.cancel()
        h.cancel()  # twice: nothing more to do
        return time.monotonic() - t0 < 5, _no_children()
    _status, out = _in_child(body)
    assert out == ("ok", (True, True)), out


def test_no_helper_is_forked_from_a_process_with_threads():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert helper.start_helper(lambda: None) is None
    finally:
        stop.set()
        t.join()


def test_the_real_command_stages_with_a_helper_and_reports_its_death_in_one_line(proc):
    """Through `queuectl enqueue --file -`, armed to die at the 700th file written: only the
    helper writes that many (the command writes two id tables), so the command reports its
    death and exits 1, the store unchanged. Without a helper the command itself would die."""
    n = 1400
    proc("enqueue", "true")
    before = {p.relative_to(proc.data): p.read_bytes() for p in proc.data.rglob("*")
              if p.is_file() and "owners" not in p.parts}
    proc.env["QUEUECTL_FAULT"] = "stage.written:700"
    p = proc("enqueue", "--file", "-", input="\n".join(_specs(n)) + "\n", check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stderr.strip().count("\n") == 0 and "a helper process died" in p.stderr, p.stderr
    after = {p.relative_to(proc.data): p.read_bytes() for p in proc.data.rglob("*")
             if p.is_file() and "owners" not in p.parts}
    assert after == before
    del proc.env["QUEUECTL_FAULT"]
    proc("enqueue", "--file", "-", input="\n".join(_specs(n)) + "\n")
    assert proc.counts()["pending"] == n + 1
