"""Crashes at named fault points: each step of each write of each operation, killed in turn.

queuectl/core/utils/faults.py SIGKILLs a process the Nth time it reaches a named step of a write
(temp file written, synced, renamed over its target; a batch staged or synced; a lock taken). For
each operation and each point, N runs from 1 until the operation gets through without reaching
the point, each time on a fresh copy of the same store, so every reachable step is cut once:

- through the real CLI (`enqueue`, `enqueue --file`, `config set`, `dlq retry [--all]`,
  `cancel`, and a `start` whose worker records a result), checked with `status`, `list` and the
  command run again: in test_fault_points_cli.py;
- here, in a forked child that calls QueueManager directly, several at a time: the same operations
  (and `dlq purge`) over 1 to WIDTH jobs, as `--all` or several ids go through them one by one,
  a worker recording a result (also one that holds a result while it starts the next job), and
  `start`'s recovery after dead workers: thousands of kills.

After each kill: every file parses, nothing is set aside or left where a job file belongs, no job
is in two folders, the store loads, what the operation reported (an id, a count) is stored, and
the next normal command works, also on a job a killed CLI command left in processing/ (the
command recovers it first; they are counted).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

import pytest

from queuectl.core.errors import DuplicateJobError, InvalidStateError
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.utils import faults
from queuectl.core.worker import Worker

from faultkit import (
    STATE_DIRS,
    marker_counts,
)

POINTS = faults.POINTS
WIDTH = 15  # dead and pending jobs in the template store
DEAD = [f"dead-{i:02d}" for i in range(WIDTH)]
PENDING = [f"pend-{i:02d}" for i in range(WIDTH)]
# The issue asks for thousands of killed writes per run; the forked variant must reach this.
FORK_KILLS_FLOOR = 2000
FORK_PARALLEL = 3


# -- stores ------------------------------------------------------------------------------------
def _build_template(root: Path, dead: int, pending: int, work: bool) -> Path:
    """A store at rest: a config, `dead` jobs in the DLQ, `pending` jobs, and if `work`, jobs
    `work` (priority 10) and `mid` (priority 5) that append their id to `marker` in the working
    directory. Every copy of a store costs time, so each operation gets only what it needs."""
    root.mkdir(parents=True)
    manager = QueueManager(get_storage(str(root / "data")))
    try:
        manager.set_config("max_retries", "3")
        manager.set_config("poll_interval", "0.05")
        if dead:
            manager.enqueue_many(json.dumps({"id": i, "command": "exit 3", "max_retries": 0}) for i in DEAD[:dead])
            _drain(manager, lambda: False, limit=dead)
        specs = [{"id": i, "command": "true"} for i in PENDING[:pending]]
        if work:
            specs += [{"id": "work", "command": "echo work >> marker", "priority": 10},
                      {"id": "mid", "command": "echo mid >> marker", "priority": 5}]
        if specs:
            manager.enqueue_many(json.dumps(spec) for spec in specs)
    finally:
        manager.storage.close()
    return root


_SNAPSHOTS: dict[Path, tuple[list[str], list[tuple[str, bytes, int]]]] = {}


def _clone(src: Path, dst: Path) -> None:
    """Copies a store at rest: its folders, and its regular files with their bytes read once
    (the wake-up FIFO is made again on demand). Templates never change once copied.

    Owners' lock files keep their time: recovery tells a dead worker's command from a later
    process given the same number by when the note was written."""
    if src not in _SNAPSHOTS:
        folders, files = [], []
        for dirpath, _dirnames, filenames in os.walk(src):
            folders.append(os.path.relpath(dirpath, src))
            for name in filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    files.append((os.path.relpath(path, src), Path(path).read_bytes(), st.st_mtime_ns))
        _SNAPSHOTS[src] = folders, files
    folders, files = _SNAPSHOTS[src]
    for folder in folders:
        os.makedirs(os.path.join(dst, folder), mode=0o700, exist_ok=True)
    for rel, content, mtime in files:
        path = os.path.join(dst, rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            assert os.write(fd, content) == len(content)
        finally:
            os.close(fd)
        if rel.endswith(".lock"):
            os.utime(path, ns=(mtime, mtime))


def _parse(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except ValueError as e:
        raise AssertionError(f"{path} does not parse after a crash: {e}") from None


def _view(data: Path) -> dict[str, tuple[str, dict]]:
    """The store as a reader finds it after a crash, in one pass: every JSON file parses, job
    folders hold job files (and dot-named temp files) only, no job is in two folders and nothing
    was set aside. Returns {id: (folder, content)}.

    One exception: a worker killed between committing a result (renamed into its folder) and
    recycling the job's old file leaves that old copy in processing/; readers take the result
    (get() looks in the finished folders first) and recovery drops the copy."""
    jobs: dict[str, tuple[str, dict]] = {}
    for state in STATE_DIRS:
        folder = data / state
        for name in os.listdir(folder) if folder.is_dir() else ():
            if name.startswith("."):
                continue
            assert name.endswith(".json"), f"{state}/{name} is not a job file"
            content = _parse(folder / name)
            seen = jobs.get(content["id"])
            if seen is not None and "processing" in (seen[0], state) and seen[0] != state:
                if state == "processing":
                    continue  # the stale copy of a committed result
            else:
                assert seen is None, f"job {content['id']} is in {seen[0]} and {state}"
            jobs[content["id"]] = (state, content)
    for name in ("config.json", "counts.json"):
        if (data / name).exists():
            _parse(data / name)
    managers = data / "managers"
    for name in os.listdir(managers) if managers.is_dir() else ():
        if name.endswith(".json") and not name.startswith("."):
            _parse(managers / name)
    if (data / "quarantine").is_dir():
        assert os.listdir(data / "quarantine") == [], "a crash must never leave a file to set aside"
    return jobs


def _loads(data: Path, view: dict) -> None:
    """What `status` and `list` read (counts, managers, config, the newest page) loads, and the
    list sees every job on disk."""
    store = get_storage(str(data))
    try:
        manager = QueueManager(store)
        manager.counts()
        manager.managers()
        assert manager.config.max_retries >= 0
        total, _page = manager.page(None, 20, 0)
        assert total == len(view), f"list shows {total} jobs, the folders hold {len(view)}"
    finally:
        store.close()


def _deaths(job: dict) -> int:
    return sum(1 for h in job.get("history", []) if str(h.get("error", "")).startswith("Worker died"))


def _ran_once_per_death(view: dict, marker: Path, job_id: str) -> None:
    """A job reruns only after an attempt that was cut short, and each such attempt is recorded
    once (also when the recovery that records it is killed and runs again)."""
    state, job = view[job_id]
    assert state == "completed", (job_id, state, job.get("history"))
    runs = marker_counts(marker)[job_id]
    assert 1 <= runs <= 1 + _deaths(job), (job_id, runs, job["history"])
    assert sum(1 for h in job["history"] if h.get("exit_code") == 0) == 1, (job_id, job["history"])
    attempts = [h["attempt"] for h in job["history"] if h.get("counted", True)]
    assert len(attempts) == len(set(attempts)), ("an attempt recorded twice", job_id, job["history"])


# -- the forked variant ------------------------------------------------------------------------
@dataclass
class Case:
    """One operation cut at one point, on a store of its own."""

    op: str
    point: str
    n: int
    path: Path

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def marker(self) -> Path:
        return self.path / "marker"


def _child(case: Case, spec: str | None, action: Callable[[QueueManager], Any]) -> int:
    """Forks a child that runs `action` on the case's store with the fault `spec` armed.

    What the action returns (what a command would print) lands in out.json, so the parent
    knows whether the child got that far before it was killed.
    """
    out = case.path / "out.json"
    if out.exists():
        out.unlink()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        os.chdir(case.path)  # the jobs write their marker here
        faults.arm(spec)
        store = get_storage(str(case.data))
        try:
            result = action(QueueManager(store))
            out.write_text(json.dumps({"result": result}))
        finally:
            store.close()
    except BaseException:
        out.write_text(json.dumps({"error": traceback.format_exc()}))
        code = 1
    finally:
        os._exit(code)


def _output(case: Case) -> Any:
    try:
        doc = json.loads((case.path / "out.json").read_text())
    except FileNotFoundError:
        return None
    assert "error" not in doc, f"{case.op} at {case.point}:{case.n}:\n{doc['error']}"
    return doc["result"]


def _state(manager: QueueManager, job_id: str) -> str:
    job = manager.storage.get(job_id)
    return job.state.value if job else "missing"


def _drain(manager: QueueManager, until: Callable[[], bool], limit: int = 10) -> None:
    worker = Worker(manager)
    try:
        for _ in range(limit):
            if until() or not worker.run_once():
                break
    finally:
        worker.unregister()


class Op:
    """An operation: what the faulted child does and what must hold after the kill; then the
    next normal command (no fault armed) and what must hold after it."""

    template = "queue"
    follow_in_child = False  # only where the next command runs jobs, which write in the cwd

    def __init__(self, name: str, ids: list[str]):
        self.name, self.ids = name, ids

    def run(self, m: QueueManager) -> Any:
        raise NotImplementedError

    def after_kill(self, case: Case, view: dict, reported: Any) -> None:
        """Checks what the operation promised before it died."""

    def follow(self, m: QueueManager, view: dict) -> list[str]:
        """Runs the next command on the store that `view` (after the kill) shows; returns the
        jobs it found stranded in processing/."""
        raise NotImplementedError

    def final(self, case: Case, view: dict) -> None:
        """Checks the store once the next command has run."""


class Enqueue(Op):
    """`enqueue` of one job, or `enqueue --file` of all the ids at once."""

    def run(self, m):
        if not self.name.startswith("enqueue --file"):
            return [m.enqueue(json.dumps({"id": self.ids[0], "command": "true"})).id]
        return [j.id for j in m.enqueue_many(json.dumps({"id": i, "command": "true"}) for i in self.ids)]

    def after_kill(self, case, view, reported):
        visible = [i for i in self.ids if i in view]
        if 0 < len(visible) < len(self.ids):  # killed while moving a committed batch into place
            tmp = case.data / "tmp"
            assert any(n.startswith(".batch-") and n.endswith(".commit") for n in os.listdir(tmp)), \
                f"a batch is partly visible and not committed: {visible}"
        if reported:
            assert visible == self.ids, "a job whose enqueue reported its id is missing"

    def follow(self, m, view):
        try:
            self.run(m)  # a committed batch is moved on first
        except DuplicateJobError:
            stored = _view(Path(m.storage.display))
            assert all(i in stored for i in self.ids), "an id refused as taken, with no job stored under it"
        return []

    def final(self, case, view):
        assert all(view[i][0] == "pending" for i in self.ids)


class ConfigSet(Op):
    def run(self, m):
        m.set_config("max_retries", "7")
        return 7

    def after_kill(self, case, view, reported):
        saved = _parse(case.data / "config.json")["max_retries"]
        assert saved == 7 or (saved == 3 and not reported), saved

    def follow(self, m, view):
        self.run(m)
        return []

    def final(self, case, view):
        assert _parse(case.data / "config.json")["max_retries"] == 7


class MoveJobs(Op):
    """`dlq retry`, `dlq purge` or `cancel` of each id in turn (as `--all` and several ids do)."""

    def __init__(self, name: str, ids: list[str], act: Callable[[QueueManager, str], Any],
                 before: str, after: str):
        super().__init__(name, ids)
        self.act, self.before, self.after = act, before, after
        self.template = "dlq" if before == "dead" else "pending"

    def run(self, m):
        for i in self.ids:
            self.act(m, i)
        return self.ids

    def after_kill(self, case, view, reported):
        for i in self.ids:
            state = view[i][0] if i in view else "missing"
            assert state in (self.before, self.after, "processing"), (i, state)
            assert not reported or state == self.after, (i, state)

    def follow(self, m, view):
        """The command again where it still applies, a job a killed command left in
        processing/ included: the command itself recovers it first (no `start` needed)."""
        stranded = [i for i in self.ids if i in view and view[i][0] == "processing"]
        for i in self.ids:
            if i in view and view[i][0] in (self.before, "processing"):
                try:
                    self.act(m, i)
                except InvalidStateError:
                    assert i in stranded  # recovery finished the killed command's move itself
        for i in stranded:
            assert _state(m, i) == self.after, (i, _state(m, i))
        return stranded

    def final(self, case, view):
        for i in self.ids:
            assert (view[i][0] if i in view else "missing") == self.after, i
        if self.after == "dead":
            assert all(view[i][1]["last_error"] == "Cancelled" for i in self.ids)


class WorkerRuns(Op):
    """A worker claims `work`, runs it, records the result and stops."""

    follow_in_child = True

    def run(self, m):
        worker = Worker(m)
        worker.run_once()
        worker.unregister()
        return ["work"]

    def after_kill(self, case, view, reported):
        assert not reported or view["work"][0] == "completed"
        assert marker_counts(case.marker)["work"] <= 1

    def follow(self, m, view):
        m.prepare_start()
        _drain(m, lambda: _state(m, "work") == "completed")
        return []

    def final(self, case, view):
        _ran_once_per_death(view, case.marker, "work")


class WorkerHolds(WorkerRuns):
    """A worker runs `work`, holds its result while it starts `mid` (see `Storage.hold_result`),
    writes it, holds `mid`'s, writes that and stops."""

    def run(self, m):
        worker = Worker(m)
        worker.run_once(hold=True)
        worker.run_once(hold=True)
        worker.record_held()
        worker.unregister()
        return ["work", "mid"]

    def after_kill(self, case, view, reported):
        assert not reported or (view["work"][0], view["mid"][0]) == ("completed", "completed")
        assert max(marker_counts(case.marker)[i] for i in ("work", "mid")) <= 1

    def follow(self, m, view):
        m.prepare_start()
        _drain(m, lambda: _state(m, "work") == "completed" and _state(m, "mid") == "completed")
        return []

    def final(self, case, view):
        _ran_once_per_death(view, case.marker, "work")
        _ran_once_per_death(view, case.marker, "mid")


class Recover(Op):
    """`start`'s housekeeping over two dead workers: one died with its result for `work`
    written and synced, one right after writing its result for `mid` (template "orphans"); or
    over one that held the result of `work` while it started `mid` ("held orphans")."""

    template = "orphans"

    def __init__(self, name: str, ids: list[str], template: str = "orphans"):
        super().__init__(name, ids)
        self.template = template
    follow_in_child = True

    def run(self, m):
        return [j.id for j in m.prepare_start()]

    def follow(self, m, view):
        m.prepare_start()
        _drain(m, lambda: _state(m, "mid") == "completed" and _state(m, "work") == "completed")
        return []

    def final(self, case, view):
        assert not [i for i, (state, _) in view.items() if state == "processing"]
        _ran_once_per_death(view, case.marker, "work")
        _ran_once_per_death(view, case.marker, "mid")


def _fork_ops() -> list[Op]:
    def retry(m, i):
        return m.retry_dead(i)

    def purge(m, i):
        return m.purge_dead(i)

    def cancel(m, i):
        return m.cancel(i)

    ops: list[Op] = [Enqueue("enqueue", ["new"]), ConfigSet("config set", []), WorkerRuns("worker", []),
                     WorkerHolds("worker, results held", []), Recover("recover", []),
                     Recover("recover, a result held", [], "held orphans")]
    for k in range(1, WIDTH + 1):
        ops += [Enqueue(f"enqueue --file x{k}", [f"b-{i:02d}" for i in range(k)]),
                MoveJobs(f"dlq retry x{k}", DEAD[:k], retry, "dead", "pending"),
                MoveJobs(f"dlq purge x{k}", DEAD[:k], purge, "dead", "missing"),
                MoveJobs(f"cancel x{k}", PENDING[:k], cancel, "pending", "dead")]
    return ops


def _fork_chain(op: Op, point: str, template: Path, slot: Path,
                tally: Counter) -> Generator[tuple[Case, str | None, Callable], int, None]:
    """Cuts `op` at `point` for N = 1, 2, ... until it runs through; yields each child to fork
    and receives its wait status."""
    n = 1
    while True:
        case = Case(op.name, point, n, slot)
        shutil.rmtree(slot, ignore_errors=True)
        _clone(template, slot)
        status = yield case, f"{point}:{n}", op.run
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, _output(case)
            return
        where = f"{op.name} killed at {point}:{n}"
        assert os.WTERMSIG(status) == signal.SIGKILL, f"{where}: wait status {status}"
        tally["kills"] += 1
        tally[point] += 1
        view = _view(case.data)
        left = _left(case.data, view)
        try:
            _loads(case.data, view)
            op.after_kill(case, view, _output(case))
            if op.follow_in_child:
                status = yield case, None, lambda m, seen=view: op.follow(m, seen)
                assert status == 0, f"the command after failed:\n{_output(case)}"
                tally["stranded"] += len(_output(case))
            else:  # no fork: this process never arms a point
                store = get_storage(str(case.data))
                try:
                    tally["stranded"] += len(op.follow(QueueManager(store), view))
                finally:
                    store.close()
            op.final(case, _view(case.data))
        except AssertionError as e:
            # a failure that comes once in many runs must say where it was cut and what it left
            raise AssertionError(f"{where}: {e}\nleft by the kill:\n{left}\nnow:\n{_left(case.data, None)}") from e
        n += 1


def _left(data: Path, view: dict | None) -> str:
    """What a killed operation left, for a failure's message: where each job is and what its
    file says, the owners' notes and the temp files."""
    lines = []
    try:
        view = view if view is not None else _view(data)
    except AssertionError as e:
        return f"  (cannot be read: {e})"
    for job_id, (state, job) in sorted(view.items()):
        lines.append(f"  {job_id}: {state} (file: {job.get('state')}, attempts {job.get('attempts')}, "
                     f"history {job.get('history')})")
    for folder in ("processing", "owners", "tmp"):
        for name in sorted(os.listdir(data / folder)) if (data / folder).is_dir() else ():
            text = (data / folder / name).read_text(errors="replace").strip() if folder == "owners" else ""
            lines.append(f"  {folder}/{name} {text}".rstrip())
    return "\n".join(lines)


def _drive(chains: list[Generator], parallel: int) -> None:
    """Runs the chains' children `parallel` at a time, from this one thread: forking from a
    threaded process could copy a lock some other thread holds."""
    waiting = iter(chains)
    running: dict[int, Generator] = {}

    def advance(chain: Generator, status: int | None) -> None:
        try:
            case, spec, action = next(chain) if status is None else chain.send(status)
        except StopIteration:
            return
        running[_child(case, spec, action)] = chain

    try:
        while True:
            while len(running) < parallel:
                chain = next(waiting, None)
                if chain is None:
                    break
                advance(chain, None)
            if not running:
                return
            pid, status = os.waitpid(-1, 0)
            if pid in running:
                advance(running.pop(pid), status)
    finally:
        for pid in running:  # a failed check must not leave children behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _orphans(template: Path, dst: Path) -> Path:
    """The template after two workers died: one after syncing its result for `work` (not yet
    renamed into completed/), one right after writing its result for `mid`."""
    _clone(template, dst)
    for spec in ("sync.after:1", "stage.written:1"):
        _pid, status = os.waitpid(_child(Case("setup", spec, 1, dst), spec, WorkerRuns("", []).run), 0)
        assert os.WIFSIGNALED(status), f"the worker was not killed at {spec}: {_output(Case('', '', 1, dst))}"
    view = _view(dst / "data")
    assert [view[i][0] for i in ("work", "mid")] == ["processing"] * 2
    return dst


def _held_orphans(template: Path, dst: Path) -> Path:
    """The template after a worker died holding the result of `work` (see `Storage.hold_result`),
    once it had noted the start of `mid`."""
    _clone(template, dst)
    spec = f"note.written:{HELD_NOTE}"
    _pid, status = os.waitpid(_child(Case("setup", spec, 1, dst), spec, WorkerHolds("", []).run), 0)
    assert os.WIFSIGNALED(status), f"the worker was not killed at {spec}: {_output(Case('', '', 1, dst))}"
    view = _view(dst / "data")
    assert [view[i][0] for i in ("work", "mid")] == ["processing"] * 2
    note = json.loads(next((dst / "data" / "owners").glob("*.lock")).read_text())
    assert note["job"] == "mid" and list(note["ended"]) == ["work"], note
    return dst


# The worker's notes: `work` starts, its group, its result held; then `mid` starts (this one).
HELD_NOTE = 4


@pytest.mark.slow
def test_forked_operations_killed_at_every_fault_point(scratch, unarmed):
    began = time.monotonic()
    queue = _build_template(scratch / "queue", 0, 0, work=True)
    templates = {"queue": queue, "orphans": _orphans(queue, scratch / "orphans"),
                 "held orphans": _held_orphans(queue, scratch / "held-orphans"),
                 "dlq": _build_template(scratch / "dlq", WIDTH, 0, work=False),
                 "pending": _build_template(scratch / "pending", 0, WIDTH, work=False)}
    tally: Counter = Counter()
    chains = [_fork_chain(op, point, templates[op.template], scratch / f"slot-{n}-{k}", tally)
              for n, op in enumerate(_fork_ops()) for k, point in enumerate(POINTS)]
    _drive(chains, FORK_PARALLEL)
    print(f"forked: {tally['kills']} kills in {time.monotonic() - began:.1f}s; per point "
          f"{ {p: tally[p] for p in POINTS} }; {tally['stranded']} jobs stranded in processing/ by a "
          f"killed command until the next start")
    assert tally["kills"] >= FORK_KILLS_FLOOR, f"only {tally['kills']} kills"
    assert all(tally[p] for p in POINTS), f"points never reached: {[p for p in POINTS if not tally[p]]}"


@pytest.mark.parametrize("died_on, housekeeping", [
    pytest.param("the next job", "recover"),
    pytest.param("the next job", "prepare_start"),
    pytest.param("its last job", "recover"),
    pytest.param("its last job", "prepare_start"),
])
def test_a_result_synced_before_its_worker_died_is_committed_not_run_again(scratch, unarmed, died_on,
                                                                         housekeeping):
    """README: "a result written but not yet committed is committed by recovery (nothing
    reruns)". The worker finishes `a`, maybe starts `b`, and is killed once its results are synced,
    before they are renamed into place; then a running `start` recovers (recover) or a new one
    starts (prepare_start)."""
    case = Case("worker", "sync.after", 1, scratch / "store")
    store = get_storage(str(case.data))
    try:
        QueueManager(store).enqueue_many(json.dumps(spec) for spec in (
            {"id": "a", "command": "echo a >> marker", "priority": 10},
            {"id": "b", "command": "echo b >> marker", "priority": 5}))
    finally:
        store.close()

    def worker(m: QueueManager) -> None:
        from queuectl.core.backends import json_backend
        json_backend.COUNT_FLUSH_INTERVAL = float("inf")  # results commit when the worker stops: a known place
        w = Worker(m)
        for _ in range(2 if died_on == "the next job" else 1):
            w.run_once()
        w.unregister()

    _pid, status = os.waitpid(_child(case, "sync.after:1", worker), 0)
    assert os.WIFSIGNALED(status), _output(case)
    store = get_storage(str(case.data))
    try:
        getattr(QueueManager(store), housekeeping)()
    finally:
        store.close()
    assert _view(case.data)["a"][0] == "completed" and marker_counts(case.marker)["a"] == 1
