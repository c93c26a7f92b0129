"""Jobs as one JSON file each, a folder per state, state changes by atomic rename.

Layout of the data directory (0700; every file 0600)::

    config.json                 settings (only those set by the user)
    counts.json                 per-state counts, kept so `status` opens one file, not a million
    ids/<id>                    a marker per job holding its enqueue sequence: O_EXCL creation
                                makes ids unique (an `enqueue --file` links its markers to
                                shared tables of `<seq> <id>` lines instead: see _link_ids)
    pending/<prio>_<due_ms>_<seq>_<id>.json   waiting jobs; the name alone orders them
    failed/<prio>_<due_ms>_<seq>_<id>.json    jobs waiting for a retry
    processing/<owner>__<id>.json             jobs taken by a live owner
    completed/<seq>_<id>.json  dead/<seq>_<id>.json   (ids/<id> holds the seq)
    owners/<owner>.lock         held (flock) by each worker or CLI process that moves jobs
    managers/<id>.json + .lock  running `start` processes
    unique/<sha256 of key>      the id of the job a unique key was last given to
    deps/<dependency>/<id>      jobs waiting for a dependency
    cancel/<id>                 a cancel request for a running job
    rate                        the earliest time the next job may start (rate limit)
    logs/<id>.<attempt>.out|err what each attempt printed (empty ones are removed)
    quarantine/                 unreadable files, set aside rather than deleted
    tmp/                        temp files before their rename; a worker's spare files;
                                .batch-*[.commit] folders of an `enqueue --file`
    stop                        time of the latest `queuectl stop`
    runnable                    touched when a job becomes runnable: workers list again
    wake                        a FIFO: an enqueue writes a byte, an idle worker wakes on it

A job changes state in two steps: its new content is written in place (unique temp file, fsync,
os.replace), then the file is renamed into its new folder. A rename is the commit point and only
one process can win it. A job file in processing/ whose owner lock is free has lost its owner;
`recover` finishes the move its content asks for, or hands the interrupted attempt to the
queue's rules. Claiming reads only file names, so its cost does not grow with history.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import stat
import time
import uuid
from json.encoder import encode_basestring_ascii as _encode_str  # type: ignore[attr-defined]
from typing import Any, Callable, Iterator

from .. import metrics
from ..errors import ConflictError, DuplicateJobError, QueuectlError, StorageError
from ..job import COMPLETED, DEAD, FAILED, PENDING, PROCESSING, Job, JobState, parse_iso
from ..storage import ManagerInfo, Storage, new_owner_id
from ..utils import fs, wake
from ..utils.faults import fault
from ..utils.helper import start_helper
from ..utils.log import get_logger

log = get_logger(__name__)

RUNNABLE = (PENDING, FAILED)
STATE_DIRS = {s: s.value for s in JobState}
# A worker re-reads the runnable folders at most this often while it still has candidates, so a
# newly enqueued job of higher priority overtakes older ones within this delay.
CANDIDATE_TTL = 0.05
# ... and at least this often, whatever happened (jobs whose due time came).
CANDIDATE_MAX_AGE = 1.0
# How many of the best candidates a refresh keeps (more than a worker starts in CANDIDATE_TTL).
CANDIDATE_BATCH = 256
# A refresh lists the runnable folders: about a quarter of a second for a backlog of 100,000
# jobs. So a worker keeps an eighth of the backlog as candidates (up to this many), re-lists at
# most once per LISTING_SHARE times its last listing took, and keeps parsed names only up to
# PARSE_CACHE_MAX of them (28 MB per 100,000 measured: a million would be 280 MB a worker).
CANDIDATE_BATCH_MAX = 20_000
LISTING_SHARE = 10
PARSE_CACHE_MAX = 200_000
# Grace between TERM and KILL when the command of a dead worker is ended.
ORPHAN_KILL_GRACE = 1.0
# Longest a worker keeps count and metric changes before writing them (status lags this much).
COUNT_FLUSH_INTERVAL = 0.05
# Jobs per id table of a bulk enqueue (see `_link_ids`): a table is read whole by `get`, and
# ext4 allows 65,000 links to one file.
TABLE_JOBS = 1000
# A bulk enqueue of at least this many jobs stages its files from a helper process while it
# links their ids (see `add_many`): at 1,000 jobs that was faster, at 300 even (the fork's cost).
HELPER_MIN_JOBS = 1000
# The pipe that feeds that helper, widened to hold about two id tables of jobs (see `_start_stager`).
STAGE_PIPE_SIZE = 1 << 20
# A temp file this old belongs to a writer that died; younger ones may still be renamed.
TEMP_MAX_AGE = 60.0
# Where a killed writer can leave a temp file (the root for config.json, stop, rate). A job's
# file is written in processing/, or staged in tmp/, and renamed into its state's folder, so
# pending/, failed/, completed/ and dead/ hold none: searching the last two at every `start`
# cost a listing of the whole history (0.27 s for 300,000 jobs, doubling the time of `start`
# before its first job), and ids/ is left out likewise.
TEMP_FOLDERS = ("processing", "tmp", "managers", "unique", "cancel", "")
# A worker recycles the files of the jobs it finished as the files of its next results (see
# `_spare_file`); it keeps at most this many. A batch's files cool until the next batch is
# synced, so this must exceed two batches (about 35 results each, see NOTE_DONE_MAX): at 32 a
# drain freed and created a file for every other job.
MAX_SPARES = 128
# A worker commits its batch early rather than let its note's list of uncommitted results pass
# this size: a note within one page is written whole even by a process killed mid-write.
NOTE_DONE_MAX = 3000
# A held result's end time in a note past this (the year 5138) is not a time: the note is damaged.
ENDED_MAX = 1e11


class JsonStorage(Storage):
    def __init__(self, path: str):
        self.root = os.path.abspath(path)
        self._prefix = os.path.join(self.root, "")
        self.display = path
        self._ready = False
        self._owners: dict[str, fs.HeldLock] = {}
        self._managers: dict[str, fs.HeldLock] = {}
        self._cli_owner: str | None = None
        self._candidates: list[tuple[tuple[int, int, str], JobState, str, str, float]] = []
        self._candidates_at = 0.0
        self._listing_seconds = 0.0
        self._parsed: dict[str, tuple[int, int, int, str] | None] = {}
        self._runnable_seen: int | None = None
        self._warned: set[str] = set()
        self._wake_fd: int | None = None
        self._delta: dict[JobState, int] = {}
        self._changes: list[tuple[Job, Job, float]] = []
        self._batching = False
        self._flushed_at = 0.0
        self._commits: list[tuple[str, str, Job, Job]] = []
        self._spares: list[str] = []
        self._cooling: list[str] = []  # recycled, not yet reusable (see `_recycle`)
        self._gen: int | None = None  # counts.json generation when this buffer began
        self._notes: dict[str, dict[str, Any]] = {}
        self._done_json: dict[str, str] = {}  # per owner, see `_note`
        self._held: dict[str, dict[str, list[Any]]] = {}  # per owner, see `hold_result`
        # A note's parts as written, per owner: each head field and each held entry is encoded
        # once, when it is set, not at each of the three writes a job.
        self._head_parts: dict[str, dict[str, str]] = {}
        self._held_parts: dict[str, dict[str, str]] = {}
        self._stale_notes: set[str] = set()  # owners whose written note names an ended command
        self._unwritten: set[str] = set()  # owners whose note has a process group not written yet

    # -- paths ---------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        # Concatenation: a worker builds a dozen paths a job, and os.path.join costs twice this.
        return self._prefix + os.sep.join(parts)

    @staticmethod
    def _runnable_name(job: Job) -> str:
        return f"{job.priority}_{int(job.due_at * 1000)}_{job.seq}_{job.id}.json"

    def _name(self, job: Job) -> str:
        """The job's file name in its state's folder."""
        if job.state is PROCESSING:
            return f"{job.worker_id}__{job.id}.json"
        if job.state in RUNNABLE:
            return self._runnable_name(job)
        return f"{job.seq}_{job.id}.json"

    def _path(self, job: Job) -> str:
        return self._p(STATE_DIRS[job.state], self._name(job))

    # -- store ---------------------------------------------------------------------------
    def exists(self) -> bool:
        try:
            return stat.S_ISDIR(os.stat(self._p("pending")).st_mode)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            raise StorageError(f"storage path '{self.display}' is not a directory") from None
        except OSError as e:
            raise StorageError(f"cannot read '{self.display}': {_reason(e)}") from e
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StorageError(f"storage path '{self.display}' is not a directory")
        return False

    def _ensure(self) -> None:
        """Creates the layout on first write and refuses a directory others could tamper with."""
        if self._ready:
            return
        try:
            fs.make_private_dir(self.root)
            check_private(self.root)
            for sub in (*STATE_DIRS.values(), "ids", "owners", "managers", "quarantine", "tmp", "logs",
                        "unique", "deps", "cancel"):
                path = self._p(sub)
                if not os.path.isdir(path):
                    fs.make_private_dir(path)
            if not os.path.exists(self._p(".ids.lock")):  # made with the store: a refused enqueue
                # that takes it (see `_mark_id`) must leave the store as it found it
                os.close(os.open(self._p(".ids.lock"), os.O_WRONLY | os.O_CREAT, fs.FILE_MODE))
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"cannot use storage path '{self.display}': {_reason(e)}") from e
        self._ready = True

    def close(self) -> None:
        if self._ready or self._commits:
            self.flush()
        self._drop_spares()
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        for owner in list(self._owners):
            self.unregister_owner(owner)  # an owner still holding jobs (a failed flush) keeps its note
        for lock in self._managers.values():
            lock.release()
        self._managers.clear()
        self._cli_owner = None

    # -- settings ------------------------------------------------------------------------
    def load_config(self) -> dict[str, Any]:
        path = self._p("config.json")
        try:
            data = json.loads(fs.read_file(path))
        except FileNotFoundError:
            self.exists()  # a storage path that is a file is an error, not an empty store
            return {}
        except OSError as e:
            raise StorageError(f"cannot read the config in '{self.display}': {_reason(e)}") from e
        except ValueError as e:
            self._quarantine(path, f"unreadable config ({e}); using defaults")
            return {}
        if not isinstance(data, dict):
            self._quarantine(path, "config is not a JSON object; using defaults")
            return {}
        return data

    def save_config(self, values: dict[str, Any]) -> None:
        self._ensure()
        with self._lock("config"):
            self._write(self._p("config.json"), json.dumps(values, indent=2).encode())

    # -- jobs ----------------------------------------------------------------------------
    wakes_on_add = True

    def add(self, job: Job) -> None:
        """Staged whole in tmp/, its id marked, renamed into place, made durable by one flush.

        The staged file stays locked until it is in place, and the id marker names it: a second
        enqueue of the same id tells a marker whose enqueue still runs from one left by an
        enqueue that died (see `_mark_id`). The O_EXCL marker already made the name unique, so
        the rename replaces nothing. An idle worker is woken before the flush: it may start the
        job while the flush runs (the enqueue is acknowledged only when it returns); one flush
        for file and folder instead of two fsyncs halves the enqueue's wait on the disk.
        """
        self._ensure()
        marker = self._p("ids", job.id)
        no_syncfs = fs._syncfs() is None  # then file and folder are fsynced before it can be seen
        tmp = self._p("tmp", f".{job.id}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        try:
            fd: int | None = fs.write_locked(tmp, job.to_json(), durable=no_syncfs)
        except OSError as e:
            _unlink(tmp)
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
        path = self._path(job)
        try:
            try:
                self._mark_id(marker, job, staged=tmp)
            except BaseException:
                _unlink(tmp)
                raise
            try:
                if not fs.RENAME_OPEN_FILES:  # Windows: let go first (a moment unguarded)
                    os.close(fd)  # type: ignore[arg-type]
                    fd = None
                _rename(tmp, path)
            except BaseException as e:
                _unlink(tmp)
                _unlink(marker)
                if isinstance(e, OSError):
                    raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
                raise
        finally:
            if fd is not None:
                os.close(fd)
        # In place: from here on the marker stays whatever fails, or the id could be given twice.
        if job.state in RUNNABLE:
            self._runnable_added()
            self.notify_work()
        self._count({job.state: 1})  # counts are stored unclamped: a claim may subtract first
        try:
            if no_syncfs:
                fs.fsync_dir(os.path.dirname(path))
            else:
                fs.sync_filesystem(self.root)
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e

    def add_many(self, jobs: Any) -> None:
        """All or nothing, also when killed: every id is claimed and every file written in a
        batch folder and synced; renaming the folder to `.commit` is the commit point, after
        which the files are moved into pending/ (and a batch a killed process left committed
        is moved on by the next `enqueue --file` or recovery). Durable when it returns.

        `jobs` may be lazy and may raise (an `enqueue --file` checks each line as it is taken):
        then nothing is stored. A store that does not exist yet is made only once every job has
        been taken, so that bad input leaves none behind.

        From HELPER_MIN_JOBS jobs on, a helper process writes the files, in order, from what
        this one sends it through a pipe, while this one goes on taking jobs and linking their
        ids: the two run on two cores. Splitting the files between the two was faster still,
        but their inodes then interleaved, and a drain in enqueue order dirtied more inode-table
        blocks per synced batch (2-worker drains of such batches ran slower in four of six
        pairs); two threads did worse than one (they queued on the folder's lock and handed the
        GIL back and forth, 8,300-8,800 against 10,300-11,900 jobs/s in-process).
        """
        source = iter(jobs)
        head = list(itertools.islice(source, HELPER_MIN_JOBS))
        helped = len(head) == HELPER_MIN_JOBS and fs._syncfs() is not None  # see `_start_stager`
        if not (helped and self.exists()):
            head.extend(source)
        self._ensure()
        self.roll_forward()
        # Named after this process's owner id: its lock tells a live batch from a dead one (a
        # helper inherits the lock, so a batch is alive while its helper runs).
        folder = self._p("tmp", f".batch-{self._own_cli_owner()}.{uuid.uuid4().hex[:12]}")
        batch = os.path.basename(folder)
        prefix = folder + os.sep
        staged: list[str] = []
        markers: list[str] = []
        anchors: list[str] = []
        helper: Any = None
        pipe: int | None = None
        try:
            os.mkdir(folder, 0o700)
            if helped:
                helper, pipe = _start_stager(prefix)
            for chunk in _chunks(head, source):
                # named as in pending/, as temp files (a reader of the store skips them until they move)
                names = [f".{self._name(job)}.tmp" for job in chunk]
                if pipe is not None:  # first, so that the helper writes while the ids are linked
                    _send(helper, pipe, b"".join(
                        b"%s\0%s\n" % (name.encode(), job.to_json()) for name, job in zip(names, chunk)))
                anchors += self._link_ids(chunk, markers, batch)
                paths = [prefix + name for name in names]
                if pipe is None:
                    _stage(chunk, paths)
                staged += paths
            if pipe is not None:
                os.close(pipe)  # the helper's end of input
                pipe = None
                helper.join()
            fs.sync_filesystem(self.root, staged + anchors + [self._p("ids"), folder])
        except BaseException as e:
            if pipe is not None:
                os.close(pipe)
            if helper is not None:
                helper.cancel()  # before the folder goes: it may still be writing into it
            for path in markers:
                _unlink(path)
            _remove_folder(folder)
            if isinstance(e, OSError):
                raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
            raise
        self._count({PENDING: len(staged)})  # before the jobs can be claimed
        self.flush()
        _rename(folder, folder + ".commit")
        try:
            self._move_batch(folder + ".commit")  # durable when it returns
        except OSError as e:  # past the commit point: saying only "failed" would invite a rerun
            raise StorageError(f"the jobs are committed in '{self.display}' but not all moved into "
                               f"the queue ({_reason(e)}); the next `enqueue --file` or `start` "
                               "moves them on") from e

    def _move_batch(self, folder: str) -> None:
        """Moves a committed batch's jobs into pending/ (those not there yet), then its folder.

        Each step is on disk before the next, for file systems that keep no order between
        folders: the commit (the `.commit` name) before the first move, or a power cut could
        keep some moves and lose the commit, and the sweep would discard the rest of the batch;
        the moves before the folder goes, or it could keep the removal and lose the moves.
        """
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        names = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
        if names:
            fs.fsync_dir(os.path.dirname(folder))
        for name in names:
            try:
                _rename(os.path.join(folder, name), self._p("pending", name[1:-4]))
            except FileNotFoundError:
                pass  # another process is moving the same batch on
        fs.fsync_dir(self._p("pending"))
        _rmdir(folder)
        self._runnable_added()
        self.notify_work(len(names))

    def _batch_alive(self, folder: str) -> bool:
        """Whether the `enqueue --file` that stages the batch `folder` (a name in tmp/) still runs."""
        owner = folder[len(".batch-"):].split(".")[0]
        return owner in self._owners or fs.probe_lock(self._p("owners", f"{owner}.lock"))[0]

    def _held_by_live_batch(self, marker: str) -> bool:
        """Whether an id marker is linked to the table of an `enqueue --file` still running: its
        jobs are not in place yet (nor staged, while it is still claiming ids), but the id is taken."""
        try:
            with open(marker, "rb") as f:
                head = f.read(256)
        except OSError:
            return False
        name = head[1:head.find(b"\n")].decode("ascii", "replace") if head.startswith(b"#") else ""
        return name.startswith(".batch-") and self._batch_alive(name)

    def _staged(self, job_id: str) -> bool:
        """Whether another live `enqueue --file` has this id in its batch (its marker is not
        stale). This process's own batch is not another: its helper writes the files while the
        ids are linked, and an id seen twice in one batch was refused before."""
        own = f".batch-{self._cli_owner}." if self._cli_owner else None
        for folder in self._names_all("tmp"):
            path = self._p("tmp", folder)
            if folder.startswith(".batch-") and not (own and folder.startswith(own)) and self._batch_alive(folder):
                try:
                    if any((p := _parse_runnable(n[1:-4])) and p[3] == job_id for n in os.listdir(path)):
                        return True
                except OSError:
                    continue
        return False

    def roll_forward(self) -> None:
        """Finishes the batches that a killed `enqueue --file` committed but did not move."""
        for name in self._names_all("tmp"):
            if name.startswith(".batch-") and name.endswith(".commit"):
                self._move_batch(self._p("tmp", name))

    def _link_ids(self, jobs: list[Job], markers: list[str], batch: str) -> list[str]:
        """Claims the ids of a bulk enqueue as hard links to shared tables of `<seq> <id>` lines,
        each headed by the batch's name, so that another enqueue of one of these ids can tell
        that a live batch holds it (see `_held_by_live_batch`).

        A link makes a name but no inode. Creating a marker file per job allocated an inode and
        a block, as costly as the job's own file, and on ext4 without a journal, shortly after
        mass deletions, far more (see `_spare_file`). A link fails like O_EXCL on a taken id;
        where links are refused (no hard links, too many to one file), a marker file is made.
        A table's own name goes as soon as its links are made (the sweep of tmp/ may take it
        from a long enqueue anyway). Returns what a system without syncfs must sync: one marker
        of each table (the same inode) and every marker file made.
        """
        anchors: list[str] = []
        linkable = True
        for start in range(0, len(jobs), TABLE_JOBS):
            chunk = jobs[start:start + TABLE_JOBS]
            table = self._p("tmp", f".ids-{uuid.uuid4().hex[:12]}.tmp")
            try:
                fs.write_private(table, f"#{batch}\n".encode()
                                 + "".join(f"{job.seq} {job.id}\n" for job in chunk).encode())
                anchored = False
                for job in chunk:
                    marker = self._p("ids", job.id)
                    if linkable:
                        try:
                            os.link(table, marker)
                            markers.append(marker)
                            if not anchored:
                                anchors.append(marker)
                                anchored = True
                            continue
                        except FileExistsError:
                            pass
                        except OSError:
                            linkable = False
                    self._mark_id(marker, job)
                    markers.append(marker)
                    anchors.append(marker)
            finally:
                _unlink(table)
        return anchors

    def _mark_id(self, marker: str, job: Job, staged: str | None = None) -> None:
        """Claims the id (O_EXCL) and records its enqueue sequence, which names finished files,
        and the locked file `staged` of the enqueue that holds it, if any (`<seq> <name>`).

        A marker that exists has a live holder, a job, or neither (its enqueue died before its
        job landed): then it is taken over, under a lock, so that of two enqueues retrying that
        id one wins.
        """
        content = f"{job.seq} {os.path.basename(staged)}".encode() if staged else str(job.seq).encode()
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, fs.FILE_MODE)
            try:
                os.write(fd, content)
            except OSError:
                os.close(fd)
                _unlink(marker)  # a full disk must not leave an id taken by no job
                raise
            os.close(fd)
            fault("id.marked")
        except FileExistsError:
            self.roll_forward()  # a batch a killed `enqueue --file` committed holds its ids
            try:
                with fs.Mutex(self._p(".ids.lock")):
                    if self._marker_held(marker, job.id, staged) or self.get(job.id) is not None or \
                            self._staged(job.id) or self._held_by_live_batch(marker):
                        raise DuplicateJobError(f"a job with id '{job.id}' already exists", job.id) from None
                    # left by an enqueue that died before its job landed: ours now (the temp file in
                    # tmp/, which the sweep reads; ids/ may hold a million names)
                    fs.write_file(marker, content, durable=False, temp_dir=self._p("tmp"))
            except OSError as e:
                raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
            fault("id.marked")
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e

    def _marker_held(self, marker: str, job_id: str, own: str | None) -> bool:
        """Whether the enqueue a marker names still runs (its staged file is locked). A marker
        with no content yet is being written, or its enqueue died at that instant: any live
        enqueue's staged file for this id, other than `own`, then counts as its holder."""
        try:
            data = fs.read_file(marker)
        except OSError:
            return False
        parts = data.split() if not data.startswith(b"#") else []  # "#": a batch's table
        if len(parts) >= 2:
            name = parts[1].decode("utf-8", "replace")
            if not name.startswith(".") or os.sep in name or "/" in name:
                return False
            return fs.probe_lock(self._p("tmp", name))[0]
        if parts or data.startswith(b"#"):
            return False  # a sequence alone (a batch's fallback, or an older marker)
        prefix = f".{job_id}."
        for name in self._names_all("tmp"):
            rest = name[len(prefix):] if name.startswith(prefix) else ""
            pid, dash, tail = rest.partition("-")
            if pid.isdigit() and dash and len(tail) == 16 and tail.endswith(".tmp") and \
                    self._p("tmp", name) != own and fs.probe_lock(self._p("tmp", name))[0]:
                return True
        return False

    def get(self, job_id: str) -> Job | None:
        self._read_own_writes()
        if not self.exists():
            return None
        try:
            seq = _marker_seq(fs.read_file(self._p("ids", job_id)), job_id)
        except FileNotFoundError:
            return None
        except OSError:
            seq = None
        for _attempt in range(2):  # a job may move between folders while we look
            if seq is not None:
                for state in (COMPLETED, DEAD):
                    job = self._read(self._p(state.value, f"{seq}_{job_id}.json"), state, missing_ok=True)
                    if job is not None:
                        return job
            for state in ((PROCESSING, PENDING, FAILED) if seq is not None
                          else tuple(JobState)):
                for name in self._names(state.value):
                    if _id_of(name, state) == job_id:
                        job = self._read(self._p(state.value, name), state, missing_ok=True)
                        if job is not None:
                            return job
            if not os.path.exists(self._p("ids", job_id)):
                return None
        return None

    def match_ids(self, prefix: str) -> list[str]:
        return sorted(n for n in self._names("ids") if n.startswith(prefix))

    def page(self, state: JobState | None, limit: int, offset: int) -> tuple[int, list[Job]]:
        """Sorts by the enqueue sequence in the file names and reads only the page's files."""
        self._read_own_writes()
        if not self.exists():
            return 0, []
        entries: list[tuple[int, str, JobState, str]] = []
        for st in (state,) if state else tuple(JobState):
            for name in self._names(st.value):
                seq = _seq_of(name, st)
                if seq is None:  # processing/: few files, the sequence is inside
                    job = self._read(self._p(st.value, name), st, missing_ok=True)
                    if job is None or self._stale_copy(job):
                        continue
                    seq = job.seq
                entries.append((seq, _id_of(name, st) or "", st, name))
        entries.sort()
        end = max(0, len(entries) - offset)
        window = entries[max(0, end - limit):end]
        jobs = [j for _, _, st, name in window if (j := self._read(self._p(st.value, name), st, missing_ok=True))]
        return len(entries) - (len(window) - len(jobs)), jobs  # set aside or moved on meanwhile

    def _stale_copy(self, job: Job) -> bool:
        """A file in processing/ whose result is already committed: a worker was killed between
        the two renames of its commit; recovery drops the copy, readers skip it meanwhile."""
        finished = (COMPLETED, DEAD)
        if any(os.path.exists(self._p(s.value, f"{job.seq}_{job.id}.json")) for s in finished):
            return True
        owner = job.worker_id or ""
        if not owner or owner in self._owners:
            return False
        held, text = fs.probe_lock(self._p("owners", f"{owner}.lock"))
        done = _parse_note(text).get("done") if not held else None
        entry = done.get(job.id) if isinstance(done, dict) else None
        dest = entry[3] if isinstance(entry, list) and len(entry) > 3 else None
        return isinstance(dest, str) and os.sep not in dest and self._committed_at(dest)

    def jobs(self, state: JobState | None = None) -> Iterator[Job]:
        self._read_own_writes()
        if not self.exists():
            return iter(())
        found: list[Job] = []
        for st in (state,) if state else tuple(JobState):
            for name in self._names(st.value):
                job = self._read(self._p(st.value, name), st, missing_ok=True)
                if job is not None and not (st is PROCESSING and self._stale_copy(job)):
                    found.append(job)
        found.sort(key=lambda j: (j.seq, j.id))
        return iter(found)

    def counts(self) -> dict[JobState, int]:
        self.flush()
        counts = {s: 0 for s in JobState}
        data = self._load_counts_file()
        if data.get("_broken"):
            return self._scan_counts()
        try:
            for s in JobState:
                counts[s] = max(0, int(data.get(s.value, 0)))
        except (ValueError, TypeError):
            return self._scan_counts()
        return counts

    def _scan_counts(self) -> dict[JobState, int]:
        if not self.exists():  # raises, worded, for a storage path that is a file
            return {s: 0 for s in JobState}
        return {s: self._count_files(s.value) for s in JobState}

    def _count_files(self, sub: str) -> int:
        """Counts job files without building a list of a million names."""
        try:
            with os.scandir(self._p(sub)) as it:
                return sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        except FileNotFoundError:
            return 0

    def recount(self) -> dict[JobState, int]:
        """Rebuilds counts.json from the folders (after a crash may have left it behind)."""
        self._ensure()
        self.flush()
        with self._lock("counts"):
            counts = self._scan_counts()
            previous = self._load_counts_file(locked=True)
            doc: dict[str, Any] = {s.value: n for s, n in counts.items()}
            doc["gen"] = int(previous.get("gen", 0) or 0) + 1  # buffers begun before now are dropped
            doc["metrics"] = metrics.merge_defaults(previous.get("metrics"))
            self._write_counts(doc)
        return counts

    def _count(self, delta: dict[JobState, int], change: tuple[Job, Job] | None = None) -> None:
        """Records a change of the kept counts (a cache `recount` can rebuild) and of the metrics.

        A worker buffers them for up to COUNT_FLUSH_INTERVAL (see `begin_batching`), so a job
        costs one locked write of counts.json per interval instead of three.
        """
        if self._gen is None and self._batching:
            self._gen = self._load_counts_file().get("gen", 0)
        for state, n in delta.items():
            if n:
                self._delta[state] = self._delta.get(state, 0) + n
        if change is not None:
            self._changes.append((change[0], change[1], time.time()))
        if not self._batching:
            self.flush()  # a worker's changes wait for `tick`, which runs while its command does

    def begin_batching(self) -> None:
        self._batching = True

    def flush(self) -> None:
        if self._commits:
            self._commit()
        if not self._delta and not self._changes:
            return
        delta, changes, gen = self._delta, self._changes, self._gen
        self._delta, self._changes, self._gen = {}, [], None
        self._flushed_at = time.monotonic()
        with self._lock("counts"):
            data = self._load_counts_file(locked=True)
            counts = {s: int(data.get(s.value, 0) or 0) for s in JobState}
            if data.get("_broken"):
                counts, delta = self._scan_counts(), {}
            if gen is not None and data.get("gen", 0) != gen:
                delta = {}  # a recount since these were buffered already saw their files
            for s, n in delta.items():
                counts[s] += n  # stored unclamped so out-of-order deltas still add up
            doc: dict[str, Any] = {s.value: n for s, n in counts.items()}
            doc["gen"] = data.get("gen", 0)
            doc["metrics"] = metrics.merge_defaults(data.get("metrics"))
            for old, new, at in changes:
                metrics.apply(doc["metrics"], old, new, at)
            self._write_counts(doc)

    def _write_counts(self, doc: dict[str, Any]) -> None:
        """Overwrites counts.json in place, under the counts lock.

        Not temp file and rename: that frees an inode each time, and on ext4 without a journal
        every file created in the next minute (or six) pays for each inode freed (see
        `_spare_file`); a few workers rewriting counts 20 times a second made a bulk enqueue
        several times slower.
        One write, padded with spaces over a longer previous content (JSON allows trailing
        blanks), so a process killed at any point leaves a whole document. The file is a cache: a
        reader that catches it mid-write reads again under the lock, and one torn by a power cut
        is rebuilt from the folders (the metrics start over).
        """
        data = json.dumps(doc).encode()
        try:
            fd = os.open(self._p("counts.json"), os.O_RDWR | os.O_CREAT | fs.O_BINARY,
                         fs.FILE_MODE)
            try:
                data = data.ljust(os.fstat(fd).st_size)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
        fault("counts.written")

    def _load_counts_file(self, locked: bool = False) -> dict[str, Any]:
        """counts.json as a dict; {} if there is none, {"_broken": True} if it does not parse."""
        try:
            data = json.loads(fs.read_file(self._p("counts.json")))
            return data if isinstance(data, dict) else {"_broken": True}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            if locked:
                return {"_broken": True}
        try:
            with self._lock("counts"):  # caught mid-write: once more, when the writer is done
                return self._load_counts_file(locked=True)
        except OSError:  # a read-only store: the lock file cannot be made
            return {"_broken": True}

    def metrics(self) -> dict[str, Any]:
        self.flush()
        return metrics.merge_defaults(self._load_counts_file().get("metrics"))

    def oldest_waiting(self) -> float | None:
        """Reads only names: the enqueue time is part of each pending file's name."""
        seqs = [parsed[2] for name in self._names("pending") if (parsed := _parse_runnable(name))]
        return min(seqs) / 1e9 if seqs else None

    # -- claim and update ------------------------------------------------------------------
    def claim(self, owner: str, now: float) -> Job | None:
        if owner in self._stale_notes:
            self._note(owner)  # recovery must not end a process group that may be reused by now
        for refreshed in (False, True):
            if refreshed or self._candidates_stale():
                if not self.exists():
                    return None
                self._load_candidates(now)
            while self._candidates:
                _key, state, name, job_id, due = self._candidates.pop()  # kept worst first
                if due > now:
                    continue
                src = self._p(STATE_DIRS[state], name)
                dst = self._p("processing", f"{owner}__{job_id}.json")
                try:
                    _rename(src, dst)
                except FileNotFoundError:
                    continue  # another worker won this one
                job = self._read(dst, PROCESSING)
                self._count({state: -1, PROCESSING: 1})
                if job is None:
                    continue  # unreadable: quarantined and uncounted
                job.worker_id = owner
                return job
            if refreshed:
                return None
        return None

    def _candidates_stale(self) -> bool:
        """Whether to list the runnable folders again before the next claim.

        When the list runs out; when it is older than CANDIDATE_TTL and something became
        runnable since (`_runnable_added` touches a marker file: one stat tells); and at least
        every CANDIDATE_MAX_AGE for jobs whose due time came. Listing a backlog of thousands
        of names every 50 ms was a tenth of a worker's time.
        """
        if not self._candidates:
            return True
        age = time.monotonic() - self._candidates_at
        pace = LISTING_SHARE * self._listing_seconds
        if age <= max(CANDIDATE_TTL, pace):
            return False
        if age > max(CANDIDATE_MAX_AGE, pace):
            return True
        try:
            touched = os.stat(self._p("runnable")).st_mtime_ns
        except OSError:
            return True
        # A touch within the clock's granularity of our listing may not change the time it shows.
        return touched != self._runnable_seen or time.time_ns() - touched < 50_000_000

    def _runnable_added(self) -> None:
        """Tells workers that a job became runnable (see `_candidates_stale`)."""
        try:
            os.utime(self._p("runnable"))
        except FileNotFoundError:
            try:
                os.close(os.open(self._p("runnable"), os.O_WRONLY | os.O_CREAT, fs.FILE_MODE))
            except OSError:
                pass
        except OSError:
            pass

    def _load_candidates(self, now: float) -> None:
        """The next jobs to try, best first: a few more than one refresh interval needs.

        Names are parsed once per process (a backlog is listed every CANDIDATE_TTL), and only
        the best few are sorted, so a refresh costs one listing and one pass.
        """
        began = time.monotonic()
        try:
            self._runnable_seen = os.stat(self._p("runnable")).st_mtime_ns  # before the listing
        except OSError:
            self._runnable_seen = None
        found = []
        parsed_names: dict[str, tuple[int, int, int, str] | None] = {}
        for state in RUNNABLE:
            for name in self._names(state.value):
                parsed = self._parsed.get(name)
                if parsed is None:
                    parsed = _parse_runnable(name)
                    if parsed is None:
                        self._quarantine(self._p(state.value, name), "unexpected file name")
                        continue
                parsed_names[name] = parsed
                prio, due_ms, seq, job_id = parsed
                if due_ms > (now + 1) * 1000:
                    continue
                found.append(((-prio, seq, job_id), state, name, job_id, due_ms / 1000))
        self._parsed = parsed_names if len(parsed_names) <= PARSE_CACHE_MAX else {}
        keep = max(CANDIDATE_BATCH, min(len(found) // 8, CANDIDATE_BATCH_MAX))
        self._candidates = heapq.nsmallest(keep, found)[::-1]
        self._candidates_at = time.monotonic()
        self._listing_seconds = self._candidates_at - began

    def update(self, old: Job, new: Job) -> None:
        if old.id != new.id:
            raise ValueError("update cannot change a job's id")
        self._ensure()
        if old.state is PROCESSING:
            src = self._path(old)
            mine = old.worker_id in self._owners
            # Only its owner and the recovery of dead owners move a running job's file: while
            # the owner is this live process, the file is there (two stats a job fewer).
            if not mine and not os.path.exists(src):
                raise ConflictError(f"job {old.id} is no longer processing")
            if mine and new.state is PROCESSING and new.worker_id == old.worker_id:
                # An attempt starts. Rewriting the file would cost a flush (ext4 flushes a file
                # renamed over another); the owner's lock note records it instead (see _read).
                self._note(old.worker_id, job=new.id, attempt=new.attempts, started_at=new.started_at)
                self._count({}, (old, new))
                return
            if mine and self._batching and new.state is not PROCESSING:
                self._queue_commit(src, old, new)
                return
        else:
            src = self._grab(old)
        final = new.state is not PROCESSING
        try:
            self._write(src, new.to_json(), durable=final, sync_dir=False)
        except OSError as e:
            raise StorageError(f"cannot write job {new.id}: {_reason(e)}") from e
        dst = self._path(new)
        if dst != src:
            # No fsync of the folders: the content is durable, and if a power cut loses the
            # rename, the file is back in processing/ saying where it goes; `recover` moves it.
            _rename(src, dst)
        if old.state is PROCESSING and final and old.worker_id in self._owners:
            self._end_of_attempt(old.worker_id or "", old.id)
        if new.state in RUNNABLE:
            self._runnable_added()
        self._count({old.state: -1, new.state: 1} if old.state is not new.state else {}, (old, new))

    def _end_of_attempt(self, owner: str, job_id: str) -> None:
        """An owner that writes results unbatched: once a result is in place, its note no longer
        names the job as running or held. A note left naming it would give a later claim of the
        same job by this owner that stale attempt (see `_overlay_note`)."""
        held = self._drop_held(owner, job_id)
        if self._notes.get(owner, {}).get("job") == job_id:
            self._note(owner, job=None)
        elif held:
            self._note(owner)

    def _read_own_writes(self) -> None:
        """A process reading the store sees its own batched results."""
        if self._commits:
            self.flush()

    def _queue_commit(self, src: str, old: Job, new: Job) -> None:
        """A worker's result: written now as a new file, made durable with the next batch.

        Until the batch commits (within COUNT_FLUSH_INTERVAL, or when the worker idles or
        exits) the job stays in processing/; if the worker dies first, the job runs again.
        """
        tmp = self._spare_file(old.worker_id or "")
        try:
            _rewrite(tmp, new.to_json())
        except OSError as e:
            _unlink(tmp)
            raise StorageError(f"cannot write job {new.id}: {_reason(e)}") from e
        self._commits.append((tmp, src, old, new))
        # For `recover`, until it commits: the attempt, where its result is, when it started,
        # and where it goes (a result already there means only the old copy was left). The note
        # no longer names the job as running: its attempt is over.
        # Kept short, so more results fit the note's page and a batch can wait for
        # COUNT_FLUSH_INTERVAL rather than NOTE_DONE_MAX: the spare's tag, not its name; the
        # destination only where it cannot be derived (completed and dead ones go by seq).
        owner = old.worker_id or ""
        name = tmp.rpartition(os.sep)[2]
        prefix = f".{owner}."
        tag = name[len(prefix):-len(".spare")] if name.startswith(prefix) and name.endswith(".spare") else name
        entry = [old.attempts, tag, old.started_at]
        if new.state in RUNNABLE:
            entry.append(self._name(new))
        if self._drop_held(owner, old.id) and self._notes.get(owner, {}).get("job") != old.id:
            # a held result (see `hold_result`): the note names the next attempt, which runs
            self._note(owner, done_add=(old.id, entry))
        else:
            self._note(owner, done_add=(old.id, entry), job=None)
        if time.monotonic() - self._flushed_at >= COUNT_FLUSH_INTERVAL or \
                len(self._done_json.get(owner, "")) > NOTE_DONE_MAX:
            self.flush()

    def tick(self) -> None:
        if (self._commits or self._delta or self._changes) and \
                time.monotonic() - self._flushed_at >= COUNT_FLUSH_INTERVAL:
            self.flush()

    def _commit(self) -> None:
        """One sync for the whole batch, then each result renamed to a name that is new."""
        commits, self._commits = self._commits, []
        try:
            fs.sync_filesystem(self.root, [c[0] for c in commits])
        except OSError as e:
            for tmp, *_ in commits:
                _unlink(tmp)
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
        # Files recycled by earlier commits are durably renamed now: they may be overwritten.
        self._spares.extend(self._cooling)
        self._cooling = []
        for tmp, src, old, new in commits:
            _rename(tmp, self._path(new))  # a new name: no implicit flush, no replace
            # Were we killed before this, `recover` sees the result and drops src.
            self._recycle(src, old.worker_id or "")
            self._count({old.state: -1, new.state: 1}, (old, new))
        if any(new.state in RUNNABLE for *_, new in commits):
            self._runnable_added()
        for owner in {old.worker_id for _, _, old, _ in commits}:
            if owner and self._done_json.get(owner, "{}") != "{}":
                self._note(owner, done_clear=True)

    def _spare_file(self, owner: str) -> str:
        """A temp file for the next result: a recycled one when there is one.

        On ext4 without a journal, allocating an inode skips every inode freed in the last
        60 seconds (360 while its inode table block is dirty), one lookup each; with a worker
        freeing one inode per job, creating a file came to cost more than running the job.
        Recycling means a steady drain allocates and frees no inode at all.
        """
        if self._spares:
            return self._spares.pop()
        return self._p("tmp", f".{owner}.{_spare_tag()}.spare")

    def _recycle(self, src: str, owner: str) -> None:
        """Keeps a finished job's old file as a spare instead of freeing its inode.

        It cools first: until the next batch's sync makes this rename durable, a power cut could
        bring the old name back, and it must not come back holding another job's result.
        """
        if len(self._spares) + len(self._cooling) >= MAX_SPARES or not owner:
            _unlink(src)
            return
        spare = self._p("tmp", f".{owner}.{_spare_tag()}.spare")
        try:
            _rename(src, spare)
        except OSError:
            _unlink(src)
            return
        self._cooling.append(spare)

    def _drop_spares(self) -> None:
        spares, self._spares, self._cooling = self._spares + self._cooling, [], []
        for path in spares:
            _unlink(path)

    def _grab(self, job: Job) -> str:
        """Takes a job that no worker holds into processing/ under this process's own owner."""
        owner = self._own_cli_owner()
        dst = self._p("processing", f"{owner}__{job.id}.json")
        try:
            _rename(self._path(job), dst)
        except FileNotFoundError:
            raise ConflictError(f"job {job.id} changed while we worked on it") from None
        return dst

    def _own_cli_owner(self) -> str:
        if self._cli_owner is None:
            owner = new_owner_id("cli")
            self.register_owner(owner)
            self._cli_owner = owner
        return self._cli_owner

    def delete(self, job: Job) -> None:
        self._ensure()
        src = self._grab(job)
        os.unlink(src)
        _unlink(self._p("ids", job.id))
        for attempt in range(1, job.attempts + 2):
            for path in self.output_paths(job.id, attempt):
                _unlink(path)
        self._count({job.state: -1})

    # -- recovery ------------------------------------------------------------------------
    def recover(self, decide: Callable[[Job], Job],
                completed: Callable[[Job, float], Job] | None = None) -> list[Job]:
        if not self.exists():
            return []
        self.roll_forward()
        by_owner: dict[str, list[str]] = {}
        for name in self._names("processing"):
            owner, sep, _rest = name.partition("__")
            if sep and name.endswith(".json"):
                by_owner.setdefault(owner, []).append(name)
        results: list[Job] = []
        dead_owners = False
        for owner, names in by_owner.items():
            if owner in self._owners:
                continue
            lock = fs.take_stale_lock(self._p("owners", f"{owner}.lock"))
            if lock is None:
                if os.path.exists(self._p("owners", f"{owner}.lock")):
                    continue  # alive
                lock = fs.HeldLock(self._p("owners", f"{owner}.lock"))  # owner died unregistered
            stuck = False
            try:
                note = _parse_note(fs.read_note(lock))
                self._end_orphan_command(owner, note, fs.modified_at(lock))
                # Listed again now that its lock is ours: it may have claimed more before it died,
                # and the note that names those goes with the lock file once we are done.
                names = [n for n in self._names("processing") if n.partition("__")[0] == owner and n.endswith(".json")]
                for name in names:
                    try:
                        job = self._recover_one(name, decide, note, completed)
                    except QueuectlError as e:  # one bad file must not hold up every other one
                        log.warning("Cannot recover %s yet: %s", name, e)
                        stuck = True
                        continue
                    if job is not None:
                        results.append(job)
            finally:
                lock.release(remove=not stuck)  # the note stays for the next pass if needed
            dead_owners = True
        self._sweep_owner_locks()
        self._sweep_spares()
        if dead_owners:
            self.recount()  # a dead worker may have died with count changes unwritten
        return results

    def _end_orphan_command(self, owner: str, note: dict[str, Any], noted_at: float | None) -> None:
        """`noted_at`: when the note was last written."""
        from ..utils.proc import end_orphan_group, marked_session, run_marks  # subprocess loads only now

        pgid = note.get("pgid") or 0
        if not (isinstance(pgid, int) and pgid > 0) and note.get("job") and type(note.get("attempt")) is int:
            # The worker died after noting the attempt, before noting its command's group: the
            # command, if it started, carries the attempt's marks in its environment.
            pgid = marked_session(run_marks(owner, str(note["job"]), note["attempt"])) or 0
        if isinstance(pgid, int) and pgid > 0:
            end_orphan_group(pgid, owner, noted_at, ORPHAN_KILL_GRACE)

    def _recover_one(self, name: str, decide: Callable[[Job], Job], note: dict[str, Any],
                     completed: Callable[[Job, float], Job] | None = None) -> Job | None:
        path = self._p("processing", name)
        owner = name.partition("__")[0]
        try:
            raw = fs.read_file(path)
        except FileNotFoundError:
            return None
        try:
            job = Job.from_json(raw)
            if job.id != _id_of(name, PROCESSING):
                raise ValueError(f"it holds job {job.id}")
        except (ValueError, TypeError) as e:
            self._quarantine(path, f"unreadable job file ({e})")
            self._count({PROCESSING: -1})
            return None
        for state in (COMPLETED, DEAD):
            if os.path.exists(self._p(state.value, f"{job.seq}_{job.id}.json")):
                _unlink(path)  # its result was committed; only the old copy was left
                return None
        written_state = job.state
        job.state, job.worker_id = PROCESSING, owner
        done = note.get("done") if isinstance(note.get("done"), dict) else {}
        # The finished results come first: the note still names the last job as running after it
        # finished (until the next claim), and that job must not run again.
        if job.id in done and written_state is not PROCESSING:
            attempt, tmp_name, started, dest = (list(done[job.id]) + [None] * 4)[:4]
            tmp_name = _spare_name(owner, str(tmp_name))
            if dest and os.sep not in str(dest) and self._committed_at(str(dest)):
                _unlink(path)  # the result was committed; the worker died before moving this copy
                return None
            result = self._uncommitted_result(str(tmp_name), job, attempt)
            if result is not None:  # the worker died with the result written: keep it, run nothing
                self.update(job, result)
                _unlink(self._p("tmp", str(tmp_name)))  # only now: a recovery killed before retries
                return result
            if self._moved_on(job, name):
                _unlink(path)  # committed, then retried, taken or purged before we came: a stale copy
                return None
            if not _on_record(job, attempt):
                job.attempts, job.finished_at = int(attempt or job.attempts + 1), None
                job.started_at = started or job.started_at or job.updated_at
                written_state = PROCESSING  # it ran, but its result is lost: the attempt counts
        elif (ended := _ended_entry(note, job.id)) and written_state in RUNNABLE:
            # It ended well, and the worker went on to its next job before writing the result. (A
            # written state that is not runnable is a recovery's own move, killed before its rename.)
            job.attempts, job.started_at, job.finished_at = ended[0], ended[1], None
            if completed is not None:
                new = completed(job, ended[2])
                self.update(job, new)
                return new
            written_state = PROCESSING  # no rule for it given: counted as cut short
        elif note.get("job") == job.id and written_state is not PROCESSING and \
                not _on_record(job, note.get("attempt")):
            job.attempts, job.started_at = int(note.get("attempt") or job.attempts + 1), note.get("started_at")
            job.finished_at = None
            written_state = PROCESSING  # the attempt had started (the owner's note says so)
        if written_state is PROCESSING:
            new = decide(job)  # the attempt was cut short: the queue's rules say what follows
        else:
            new = job.evolve(state=written_state)  # the move was written but not renamed
            if written_state in RUNNABLE:
                new.worker_id = None
        self.update(job, new)
        return new

    def _moved_on(self, job: Job, name: str) -> bool:
        """Whether a dead worker's copy in processing/, whose result is not in its spare, is stale:
        the result was committed and has moved on since (retried, taken by another worker,
        purged, its id given to a new job). Otherwise the result was lost (a power cut) and the
        job runs again."""
        try:
            marker = fs.read_file(self._p("ids", job.id))
        except FileNotFoundError:
            return True  # purged
        except OSError:
            return False
        if marker.strip() and _marker_seq(marker, job.id) != job.seq:
            return True  # the id now names another job
        tail = f"_{job.id}.json"
        if any(n.endswith(tail) and _id_of(n, s) == job.id for s in RUNNABLE for n in self._names(s.value)):
            return True
        return any(n != name and _id_of(n, PROCESSING) == job.id for n in self._names("processing"))

    def _committed_at(self, dest: str) -> bool:
        """Whether a result named `dest` (a file name in its state's folder) is in place."""
        return any(os.path.exists(self._p(s.value, dest)) for s in JobState if s is not PROCESSING)

    def _uncommitted_result(self, tmp_name: str, job: Job, attempt: Any = None) -> Job | None:
        """The result a dead worker wrote but had not committed, if it is whole (a killed process
        loses nothing it wrote; a power cut may leave the file empty, and then the job reruns)."""
        path = self._p("tmp", tmp_name)
        if not tmp_name.startswith(".") or os.sep in tmp_name or (os.altsep or os.sep) in tmp_name:
            return None
        try:
            result = Job.from_json(fs.read_file(path))
        except (OSError, ValueError, TypeError):
            return None
        if result.id != job.id or result.state is PROCESSING or result.finished_at is None:
            return None
        if attempt is not None and result.attempts != attempt:
            last = result.history[-1] if result.history else {}
            given_back = result.attempts == attempt - 1 and last.get("attempt") == attempt and \
                last.get("counted") is False  # `release`: the attempt was cut short, uncounted
            if not given_back:
                return None  # an older copy (after a power cut): not this attempt's result
        return result

    def _sweep_owner_locks(self) -> None:
        """Removes lock files of owners that died holding no job (killed CLI calls)."""
        holders = {n.partition("__")[0] for n in self._names("processing")}
        for name in self._names("owners"):
            if not name.endswith(".lock") or name[:-5] in self._owners or name[:-5] in holders:
                continue
            lock = fs.take_stale_lock(self._p("owners", name))
            if lock is not None:
                # It may have claimed a job after our listing and died since: then its note is
                # what recovery needs (the job's attempt, its process group), so the file stays.
                owner = name[:-5]
                holds_jobs = any(n.partition("__")[0] == owner for n in self._names("processing"))
                lock.release(remove=not holds_jobs)

    def log_dir(self) -> str:
        self._ensure()
        return self._p("logs")

    def output_paths(self, job_id: str, attempt: int) -> tuple[str, str]:
        base = self._p("logs", f"{job_id}.{attempt}")
        return base + ".out", base + ".err"

    def maintain(self) -> None:
        self._ensure()
        self.sweep_managers()
        self._sweep_owner_locks()
        self._sweep_temp_files()
        self.roll_forward()
        self.recount()

    def _sweep_temp_files(self) -> None:
        """Removes temp files that a killed process left before its rename (older than a minute),
        in the folders where writes make them (see TEMP_FOLDERS)."""
        cutoff = time.time() - TEMP_MAX_AGE
        for sub in TEMP_FOLDERS:
            folder = self._p(sub) if sub else self.root
            try:
                with os.scandir(folder) as it:
                    stale = [e.path for e in it if e.name.endswith(".tmp") and e.name.startswith(".")
                             and e.stat().st_mtime < cutoff]
            except OSError:
                continue
            for path in stale:
                _unlink(path)
        for name in self._names_all("tmp"):  # batches whose `enqueue --file` died before commit
            if name.startswith(".batch-") and not name.endswith(".commit") and not self._batch_alive(name):
                _remove_folder(self._p("tmp", name))
        self._sweep_spares()

    def _sweep_spares(self) -> None:
        """Removes the spare files of workers that are gone and recovered.

        A dead worker's lock file stays until `recover` has read its note, and a spare it names
        may hold a result to commit, so only spares of owners without a lock file go.
        """
        for name in self._names_all("tmp"):
            owner = name[1:].rpartition(".")[0].rpartition(".")[0]
            if name.endswith(".spare") and owner not in self._owners and \
                    not os.path.exists(self._p("owners", f"{owner}.lock")):
                _unlink(self._p("tmp", name))

    # -- wake-ups ------------------------------------------------------------------------
    def wait_for_work(self, owner: str, timeout: float) -> None:
        """Sleeps on the wake-up pipe: an enqueue wakes one idle worker at once."""
        if self._wake_fd is None and self.exists():
            self._wake_fd = wake.open_listener(self._p("wake"))
        if self._wake_fd is None:
            time.sleep(timeout)
        else:
            wake.wait(self._wake_fd, timeout)

    def notify_work(self, count: int = 1) -> None:
        if self.exists():
            wake.notify(self._p("wake"), count)

    # -- owners and managers ---------------------------------------------------------------
    def register_owner(self, owner: str) -> None:
        self._ensure()
        try:
            self._owners[owner] = fs.HeldLock(self._p("owners", f"{owner}.lock"))
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e

    def unregister_owner(self, owner: str) -> None:
        lock = self._owners.pop(owner, None)
        self._notes.pop(owner, None)
        self._head_parts.pop(owner, None)
        self._held_parts.pop(owner, None)
        self._stale_notes.discard(owner)
        self._unwritten.discard(owner)
        self._done_json.pop(owner, None)
        self._held.pop(owner, None)
        if lock is not None:
            # a lock file that still explains a job in processing/ stays for `recover` to read
            holds_jobs = any(n.startswith(f"{owner}__") for n in self._names("processing"))
            lock.release(remove=not holds_jobs)

    def hold_result(self, owner: str, job: Job, finished: float) -> bool:
        """The owner's note lists the job as "ended" (its attempt, start and end) from now until
        `_queue_commit` moves it to "done"; `recover` records such a job completed."""
        if owner not in self._owners:
            return False
        # Microseconds, formatted as integers: a float's repr (and round()) went through dtoa,
        # a few microseconds a note.
        micros = round(finished * 1e6)
        self._held.setdefault(owner, {})[job.id] = [job.attempts, job.started_at, micros / 1e6]
        self._held_parts.setdefault(owner, {})[job.id] = (
            f"{_json_value(job.id)}: [{job.attempts}, {_json_value(job.started_at)}, "
            f"{micros // 1_000_000}.{micros % 1_000_000:06d}]")
        self._note(owner)
        return True

    def _drop_held(self, owner: str, job_id: str) -> bool:
        """Forgets a held result (written now, or given up); whether there was one."""
        held = self._held.get(owner)
        if not held or held.pop(job_id, None) is None:
            return False
        self._held_parts.get(owner, {}).pop(job_id, None)
        return True

    def note_running(self, owner: str, pgid: int | None, defer: bool = False) -> None:
        if pgid:
            note = self._notes.get(owner)
            if note is not None and owner in self._owners:
                if defer:  # the held result's note, written next, carries it: one write a job fewer
                    note["pgid"] = pgid
                    self._head_parts.setdefault(owner, {})["pgid"] = f'"pgid": {pgid}, '
                    self._unwritten.add(owner)
                    return
                if note.get("pgid") == pgid and owner not in self._unwritten:
                    return  # that note did
            self._note(owner, pgid=pgid)
            return
        # The command has ended. Its result, recorded next, rewrites the note without the group
        # (one write a job fewer); should it not come, the next claim writes the note first.
        note = self._notes.get(owner)
        if note and note.pop("pgid", None) is not None:
            self._head_parts.get(owner, {}).pop("pgid", None)
            self._stale_notes.add(owner)

    def _note(self, owner: str, done_add: tuple[str, list[Any]] | None = None, done_clear: bool = False,
              **fields: Any) -> None:
        """The owner's lock note, for recovery: the attempt it runs, its process group, the
        successes it holds ("ended", see `hold_result`) and the results written but not
        committed yet ("done").

        "done" is kept serialized and grown in place: the note is rewritten three to five times a
        job, and re-encoding a batch's worth of results each time cost more than the rest of it.
        """
        lock = self._owners.get(owner)
        if lock is None:
            return
        note = self._notes.setdefault(owner, {})
        parts = self._head_parts.setdefault(owner, {})
        if "job" in fields:
            note = {}  # a new attempt; uncommitted results stay listed
            self._notes[owner] = note
            parts = self._head_parts[owner] = {}
        for key, value in fields.items():  # keys are ours: plain
            note[key] = value
            parts[key] = f'"{key}": {_json_value(value)}, '
        done = self._done_json.get(owner, "{}")
        if done_clear:
            done = "{}"
        if done_add is not None:
            entry = f"{_json_value(done_add[0])}: [{', '.join(map(_json_value, done_add[1]))}]"
            done = "{" + entry + "}" if done == "{}" else done[:-1] + ", " + entry + "}"
        self._done_json[owner] = done
        head = "".join(parts.values())
        held = self._held_parts.get(owner)
        if held:
            head += '"ended": {' + ", ".join(held.values()) + "}, "
        lock.note("{" + head + '"done": ' + done + "}")
        # only once it is written: a failed write leaves a deferred group to be written again
        self._stale_notes.discard(owner)
        self._unwritten.discard(owner)
        fault("note.written")

    def register_manager(self, info: ManagerInfo) -> None:
        self._ensure()
        try:
            self._managers[info.id] = fs.HeldLock(self._p("managers", f"{info.id}.lock"))
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e
        data = {"id": info.id, "pid": info.pid, "workers": info.workers,
                "started_at": info.started_at, "host": info.host, "storage": info.storage,
                "extra": info.extra}
        self._write(self._p("managers", f"{info.id}.json"), json.dumps(data).encode())

    def unregister_manager(self, manager_id: str) -> None:
        _unlink(self._p("managers", f"{manager_id}.json"))
        lock = self._managers.pop(manager_id, None)
        if lock is not None:
            lock.release()

    def managers(self) -> list[ManagerInfo]:
        found = []
        for name in self._names("managers"):
            if not name.endswith(".json"):
                continue
            mid = name[:-5]
            held, _ = fs.probe_lock(self._p("managers", f"{mid}.lock"))
            if not held and mid not in self._managers:
                continue  # its process is gone; `start` clears the file later
            try:
                data = json.loads(fs.read_file(self._p("managers", name)))
                found.append(ManagerInfo(**data))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda m: m.started_at)

    def sweep_managers(self) -> None:
        """Deletes the records of managers that died without unregistering."""
        for name in self._names("managers"):
            if name.endswith(".lock"):
                lock = fs.take_stale_lock(self._p("managers", name))
                if lock is not None:
                    _unlink(self._p("managers", name[:-5] + ".json"))
                    lock.release(remove=True)
            elif name.endswith(".json") and not os.path.exists(self._p("managers", name[:-5] + ".lock")):
                _unlink(self._p("managers", name))

    def request_stop(self, force: bool = False) -> None:
        self._ensure()
        self._write(self._p("stop"), json.dumps({"at": time.time(), "force": force}).encode())

    def stop_requested(self, since: float) -> str | None:
        try:
            data = json.loads(fs.read_file(self._p("stop")))
            if float(data["at"]) >= since:
                return "force" if data.get("force") else "graceful"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    # -- scheduling aids -------------------------------------------------------------------
    def unique_holder(self, key: str) -> str | None:
        try:
            return fs.read_file(self._unique_path(key)).decode() or None
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read '{self.display}': {_reason(e)}") from e

    def reserve_unique(self, key: str, job_id: str, expected: str | None) -> bool:
        self._ensure()
        with self._lock("unique"):
            if self.unique_holder(key) != expected:
                return False
            self._write(self._unique_path(key), job_id.encode())
            return True

    def _unique_path(self, key: str) -> str:
        import hashlib

        digest = hashlib.sha256(key.encode()).hexdigest()[:40]
        return self._p("unique", digest)

    def add_dependant(self, dependency: str, job_id: str) -> None:
        self._ensure()
        folder = self._p("deps", dependency)
        fs.make_private_dir(folder)
        fd = os.open(os.path.join(folder, job_id), os.O_WRONLY | os.O_CREAT, fs.FILE_MODE)
        os.close(fd)
        fs.fsync_dir(folder)

    def dependants(self, dependency: str) -> list[str]:
        # Asked of every finished job, and most have none: no scandir, and no exception either
        # (building a FileNotFoundError cost more than both calls here). The folder is missing
        # when it cannot be seen from a deps/ that can be searched; anything else is listed
        # below, to fail as it should.
        folder = self._p("deps", dependency)
        if not os.access(folder, os.F_OK) and os.access(self._p("deps"), os.X_OK):
            return []
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot read '{self.display}': {_reason(e)}") from e
        return sorted(n for n in names if not n.startswith("."))

    def request_cancel(self, job_id: str) -> None:
        self._ensure()
        self._write(self._p("cancel", job_id), b"")

    def cancel_requested(self, job_id: str) -> bool:
        return os.path.exists(self._p("cancel", job_id))

    def clear_cancel(self, job_id: str) -> None:
        _unlink(self._p("cancel", job_id))

    def take_start_slot(self, rate: float, now: float | None = None) -> float:
        """GCRA: the file holds the earliest time the next start is allowed."""
        if rate <= 0:
            return 0.0
        self._ensure()
        interval = 1.0 / rate
        with self._lock("rate"):
            if now is None:
                now = time.time()  # after the wait for the lock: workers starting together queue here
            try:
                allowed = float(fs.read_file(self._p("rate")))
            except (OSError, ValueError):
                allowed = 0.0
            if allowed > now:
                return allowed - now
            self._write(self._p("rate"), repr(max(allowed, now) + interval).encode(), durable=False)
            return 0.0

    # -- helpers -------------------------------------------------------------------------
    def _names(self, sub: str) -> list[str]:
        try:
            with os.scandir(self._p(sub)) as it:
                return [e.name for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"cannot read '{self.display}': {_reason(e)}") from e

    def _names_all(self, sub: str) -> list[str]:
        """Every name in a folder, hidden ones included."""
        try:
            return os.listdir(self._p(sub))
        except OSError:
            return []

    def _read(self, path: str, state: JobState, missing_ok: bool = False) -> Job | None:
        try:
            raw, inode = _read_file(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise ConflictError(f"{os.path.basename(path)} vanished") from None
        except IsADirectoryError:
            self._quarantine(path, "a folder where a job file belongs")
            return None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {_reason(e)}") from e
        try:
            job = Job.from_json(raw)
        except (ValueError, TypeError) as e:
            if _moved(path, inode):  # a worker recycled the file while we read it
                if missing_ok:
                    return None
                raise ConflictError(f"{os.path.basename(path)} vanished") from None
            name = path.rpartition(os.sep)[2]
            # A job's file was counted in its folder; a stray file (`notes.txt`) never was.
            if self._quarantine(path, f"unreadable job file ({e})") and _id_of(name, state) is not None:
                self._count({state: -1})
            return None
        name = path.rpartition(os.sep)[2]
        if job.id != _id_of(name, state) and _moved(path, inode):
            if missing_ok:
                return None
            raise ConflictError(f"{os.path.basename(path)} vanished")
        job.state = state  # the folder, not the content, is the truth
        if state is PROCESSING:
            self._overlay_note(name, job)
        return job

    def _overlay_note(self, name: str, job: Job) -> None:
        """A running job's attempt and start time live in its owner's lock note."""
        owner = name.partition("__")[0]
        job.worker_id = owner
        if owner in self._notes:
            note = self._notes[owner]
        else:
            note = _parse_note(fs.probe_lock(self._p("owners", f"{owner}.lock"))[1])
        if note.get("job") == job.id and note.get("attempt"):
            job.attempts = int(note["attempt"])
            job.started_at = note.get("started_at")
            job.finished_at = None
        elif ended := _ended_entry(note, job.id) or _ended_entry({"ended": self._held.get(owner)}, job.id):
            # its result held: the note read from disk lists it, and so does this process's own
            # record when the owner is ours (the in-memory note keeps "ended" apart)
            job.attempts, job.started_at, job.finished_at = ended[0], ended[1], None

    def _write(self, path: str, data: bytes, durable: bool = True, sync_dir: bool = True) -> None:
        try:
            fs.write_file(path, data, durable=durable, sync_dir=sync_dir)
        except OSError as e:
            raise StorageError(f"cannot write to '{self.display}': {_reason(e)}") from e

    def _lock(self, name: str) -> Any:
        """The counts lock is taken with every batch of changes: a plain blocking flock, no
        import and no polling. The rarer ones (config, unique keys, rate) use filelock."""
        if name == "counts":
            return fs.Mutex(self._p(".counts.lock"))
        from filelock import FileLock
        return FileLock(self._p(f".{name}.lock"), mode=fs.FILE_MODE, thread_local=False, poll_interval=0.001)

    def _quarantine(self, path: str, why: str) -> bool:
        """Moves an unreadable file aside, once, and says so in the log; True if this call moved it."""
        if path in self._warned:
            return False
        self._warned.add(path)
        dest = self._p("quarantine", f"{int(time.time())}_{uuid.uuid4().hex[:8]}_{os.path.basename(path)}")
        try:
            fs.make_private_dir(self._p("quarantine"))
            os.rename(path, dest)  # a unique name: nothing set aside is ever overwritten
            log.warning("Set aside %s: %s (moved to %s)", path, why, dest)
            return True
        except OSError:
            log.warning("Cannot read %s: %s", path, why)
            return False


def _spare_name(owner: str, tag: str) -> str:
    """A spare file's name from the tag a note keeps (older notes kept the whole name)."""
    return tag if tag.startswith(".") else f".{owner}.{tag}.spare"


def _json_value(value: Any) -> str:
    """JSON for one value of a lock note; a note is written three or four times a job, and json.dumps
    of the whole cost more than the write."""
    if type(value) is str:
        return _encode_str(value)
    if type(value) is int:
        return str(value)
    if type(value) is float and value - value == 0.0:  # finite: what json.dumps writes, at a tenth the cost
        return repr(value)
    return json.dumps(value)


def check_private(path: str) -> None:
    """Refuses a data directory that another user owns or anyone may write to."""
    st = os.stat(path)
    if os.name == "posix":
        if st.st_uid != os.geteuid():
            raise StorageError(f"storage path '{path}' belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o022:
            raise StorageError(
                f"storage path '{path}' is writable by others (mode {st.st_mode & 0o777:o}); "
                f"run: chmod 700 '{path}'")


def _marker_seq(data: bytes, job_id: str) -> int | None:
    """The enqueue sequence an id marker holds: its content, or its id's line in a table that a
    bulk enqueue linked it to (a `#<batch>` line, then `<seq> <id>` lines); None if it holds
    neither."""
    if data.startswith(b"#"):
        if not data.endswith(b"\n"):
            data += b"\n"  # stripped: the last line must still match
        end = data.find(f" {job_id}\n".encode())  # ids hold no spaces: only its own line ends so
        if end < 0:
            return None
        data = data[data.rfind(b"\n", 0, end) + 1:end]
    parts = data.split()  # `<seq>`, or `<seq> <staged file>` (see `_mark_id`)
    try:
        return int(parts[0]) if parts else None
    except ValueError:
        return None


def _parse_note(text: str) -> dict[str, Any]:
    try:
        note = json.loads(text) if text else {}
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def _on_record(job: Job, attempt: Any) -> bool:
    """Whether the job file already records the attempt a dead owner's note names: a claim never
    rewrites the file (it holds the attempt before), so this is a recovery's own outcome, written
    before that recovery was killed short of renaming it; counting it again would record one
    death twice."""
    return type(attempt) is int and job.attempts >= attempt


def _ended_entry(note: dict[str, Any], job_id: str) -> tuple[int, str | None, float] | None:
    """A held result's entry in an owner's note (see `hold_result`): (attempt, started_at, ended
    at); None if the note has none for this job or it is malformed."""
    ended = note.get("ended")
    entry = ended.get(job_id) if isinstance(ended, dict) else None
    if not isinstance(entry, list) or len(entry) < 3:
        return None
    attempt, started, finished = entry[:3]
    if type(attempt) is not int or attempt < 1 or type(finished) not in (int, float) or \
            not 0 < finished < ENDED_MAX:  # also NaN and infinity
        return None
    if started is not None:
        try:
            parse_iso(started)
        except (AttributeError, TypeError, ValueError, OverflowError):
            return None
    return attempt, started, float(finished)


def _parse_runnable(name: str) -> tuple[int, int, int, str] | None:
    if not name.endswith(".json"):
        return None
    parts = name[:-5].split("_", 3)
    if len(parts) != 4:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
    except ValueError:
        return None


def _id_of(name: str, state: JobState) -> str | None:
    if not name.endswith(".json"):
        return None
    if state in RUNNABLE:
        parsed = _parse_runnable(name)
        return parsed[3] if parsed else None
    if state is PROCESSING:
        return name[:-5].partition("__")[2] or None
    return name[:-5].partition("_")[2] or None


def _seq_of(name: str, state: JobState) -> int | None:
    """The enqueue sequence a file name carries (None for processing/ names)."""
    try:
        if state in RUNNABLE:
            parsed = _parse_runnable(name)
            return parsed[2] if parsed else None
        if state is PROCESSING:
            return None
        return int(name.partition("_")[0])
    except ValueError:
        return None


_spare_count = itertools.count(1)


def _spare_tag() -> str:
    """Unique among one owner's files: owners are per process, and so is this count."""
    return f"{os.getpid():x}-{next(_spare_count):x}"


def _rename(src: str, dst: str) -> None:
    """A move of the store (the commit point of a state change), with its fault point."""
    os.rename(src, dst)
    fault("rename.done")


def _read_file(path: str) -> tuple[bytes, int]:
    """A file's content and the inode it was read from."""
    fd = os.open(path, os.O_RDONLY | fs.O_BINARY)
    try:
        st = os.fstat(fd)
        chunks, got = [], 0
        while chunk := os.read(fd, max(st.st_size + 1 - got, 1 << 16)):
            chunks.append(chunk)
            got += len(chunk)
            if got == st.st_size:
                break  # all that fstat said: no call to read the end-of-file (a file grown since reads on)
        return b"".join(chunks), st.st_ino
    finally:
        os.close(fd)


def _moved(path: str, inode: int) -> bool:
    """Whether `path` no longer names the inode that was read (renamed away, maybe reused)."""
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return True


def _rewrite(path: str, data: bytes) -> None:
    """Writes a private temp file, reusing its inode and blocks if it exists; the caller syncs
    the batch. Overwriting in place and cutting the tail after costs a tenth of O_TRUNC, which
    frees the blocks (a discard each, on this kind of mount) only to allocate them again. A
    process killed halfway leaves a file that does not parse, and nothing points to it yet.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | fs.O_BINARY, fs.FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    fault("stage.written")


def _stage(jobs: list[Job], paths: list[str]) -> None:
    """Writes each job to its new file (a bulk enqueue's batch; synced by the caller)."""
    for job, path in zip(jobs, paths):
        fs.write_private(path, job.to_json())


def _chunks(head: list[Job], source: Iterator[Job]) -> Iterator[list[Job]]:
    """`head`, then what `source` still holds, in lists of one id table each."""
    for start in range(0, len(head), TABLE_JOBS):
        yield head[start:start + TABLE_JOBS]
    while chunk := list(itertools.islice(source, TABLE_JOBS)):
        yield chunk


def _start_stager(prefix: str) -> tuple[Any, int | None]:
    """Forks the helper of a bulk enqueue (see `add_many`); returns it and the pipe that feeds
    it, or (None, None) where no helper can start.

    POSIX with syncfs only: there one syncfs makes the helper's files durable (elsewhere each
    would be fsynced by name). The pipe is widened where the system allows, so that the
    enqueue can send a table's worth of jobs and go on linking while the helper writes.
    """
    read_end, write_end = os.pipe()
    fs.widen_pipe(write_end, STAGE_PIPE_SIZE)

    def work() -> None:
        os.close(write_end)  # or the helper would never see the end of its input
        _stage_stream(read_end, prefix)

    helper = start_helper(work)
    os.close(read_end)
    if helper is None:
        os.close(write_end)
        return None, None
    return helper, write_end


def _send(helper: Any, pipe: int, data: bytes) -> None:
    """Feeds the helper; a helper that failed or died is reported as such (see `Helper.join`)."""
    try:
        fs._write_all(pipe, data)
    except BrokenPipeError:
        helper.join()  # raises what the helper raised, or that it died
        raise


def _stage_stream(pipe: int, prefix: str) -> None:
    """The helper's side of `add_many`: writes each `<name>\\0<job>\\n` record read from
    `pipe` to the new file `prefix + name`, in order, until the enqueue closes the pipe. A
    job's JSON holds no raw newline or NUL: the encoder escapes every control character."""
    rest = b""
    while data := os.read(pipe, STAGE_PIPE_SIZE):
        records = (rest + data).split(b"\n")
        rest = records.pop()
        for record in records:
            name, _, job = record.partition(b"\0")
            fs.write_private(prefix + name.decode(), job)
    if rest:  # the enqueue died mid-send: its batch is dead, and swept as such
        raise OSError(0, "the job stream of a bulk enqueue ended mid-record")


def _remove_folder(path: str) -> None:
    """Removes a folder of files (a batch that was never committed)."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        _unlink(os.path.join(path, name))
    _rmdir(path)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reason(e: OSError) -> str:
    import errno
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOTDIR:
        return "not a directory"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)
