"""The storage interface every backend implements, and the factory that picks one.

A backend stores jobs and answers for their atomicity; it knows nothing of retry rules. The
QueueManager decides what a job becomes; the backend makes that change happen once, whole, or
not at all. The contract test suite (tests/test_storage_contract.py) runs against every backend.
"""
from __future__ import annotations

import os
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .job import Job, JobState


@dataclass
class ManagerInfo:
    """A running `start` process, as `status` shows it."""

    id: str
    pid: int
    workers: int
    started_at: float
    host: str = ""
    storage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Storage(ABC):
    """Where jobs, settings and the registry of live processes are kept.

    Owners: every process that changes a job registers an owner id first. A job being processed
    belongs to one owner; when the owner's process dies, `recover` hands the job back to the
    queue's rules. Backends decide how liveness is known (an OS lock, a heartbeat lease).
    """

    #: how the store is named to a user (never carries a secret)
    display: str
    #: `add` wakes an idle worker itself (before its flush, which a worker need not wait for)
    wakes_on_add: bool = False

    # -- store ---------------------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool:
        """Whether the store has been created; read-only commands on a missing store see it empty."""

    def close(self) -> None:
        """Releases what this instance holds (owner locks, connections)."""

    # -- settings ------------------------------------------------------------------------
    @abstractmethod
    def load_config(self) -> dict[str, Any]:
        """The stored settings; {} when none are stored."""

    @abstractmethod
    def save_config(self, values: dict[str, Any]) -> None:
        """Replaces the stored settings durably."""

    # -- jobs ----------------------------------------------------------------------------
    @abstractmethod
    def add(self, job: Job) -> None:
        """Stores a new pending job durably. DuplicateJobError if its id exists."""

    def add_many(self, jobs: Iterable[Job]) -> None:
        """Stores many new jobs; durable when it returns. `jobs` may be lazy and may raise (a
        bad spec): then none is stored. The default takes them all, then adds them one by one."""
        for job in list(jobs):
            self.add(job)

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job with exactly this id, or None."""

    @abstractmethod
    def match_ids(self, prefix: str) -> list[str]:
        """Ids that start with `prefix`, sorted; [] when none do."""

    @abstractmethod
    def jobs(self, state: JobState | None = None) -> Iterator[Job]:
        """Jobs in `state` (all states if None), oldest enqueue first; empty when none."""

    def page(self, state: JobState | None, limit: int, offset: int) -> tuple[int, list[Job]]:
        """(how many match, the `limit` newest after skipping the `offset` newest, oldest first).

        The default reads every match; backends that can order without reading override it.
        """
        found = list(self.jobs(state))
        end = max(0, len(found) - offset)
        return len(found), found[max(0, end - limit):end]

    @abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Number of jobs in each state, without reading every job; zeros when empty."""

    def oldest_waiting(self) -> float | None:
        """Enqueue time (epoch seconds) of the oldest pending job; None when none waits."""
        for job in self.jobs(JobState.PENDING):
            return job.seq / 1e9
        return None

    @abstractmethod
    def claim(self, owner: str, now: float) -> Job | None:
        """Atomically takes the first due runnable job (priority, then FIFO) for `owner`.

        The job comes back in state PROCESSING with worker_id set to `owner`, its other fields as
        stored; None when nothing is due. No two callers ever get the same job.
        """

    @abstractmethod
    def update(self, old: Job, new: Job) -> None:
        """Replaces `old` (as last read) by `new`, moving it to new.state, as one atomic step.

        ConflictError if the job is no longer as `old` says (another process moved it first).
        """

    @abstractmethod
    def delete(self, job: Job) -> None:
        """Removes a job that no worker holds, with its id and output.

        ConflictError if the job is no longer as `job` says.
        """

    @abstractmethod
    def recover(self, decide: Callable[[Job], Job],
                completed: Callable[[Job, float], Job] | None = None) -> list[Job]:
        """Hands every job whose owner died to `decide` and stores what it returns.

        A job whose successful end its owner held (see `hold_result`) goes to `completed` with
        the time it ended instead, when `completed` is given. Only jobs whose owner is certainly
        gone are touched. Returns the stored results; [] when there is nothing to recover.
        """

    def hold_result(self, owner: str, job: Job, finished: float) -> bool:
        """Whether `owner` may record `job`'s successful attempt (ended at `finished`) later.

        A worker asks so that it can start its next command before writing this result. From
        here until `update` stores the job's result, whatever the backend keeps for `recover`
        about `owner` says that `job` ended well, so a worker that dies meanwhile neither runs it
        again nor loses it. False (this default): the backend cannot; record the result now.
        """
        return False

    def begin_batching(self) -> None:
        """Lets the backend buffer its bookkeeping (counts, metrics) briefly; a worker's choice."""

    def flush(self) -> None:
        """Writes buffered bookkeeping now (workers call it when idle and before exiting)."""

    def tick(self) -> None:
        """Called often by a busy worker: writes buffered bookkeeping that has waited long enough."""

    def maintain(self) -> None:
        """Housekeeping when a manager starts: rebuild caches, clear what dead processes left."""

    # -- owners and managers ---------------------------------------------------------------
    @abstractmethod
    def register_owner(self, owner: str) -> None:
        """Marks `owner` alive for as long as this process lives (or until unregister_owner)."""

    @abstractmethod
    def unregister_owner(self, owner: str) -> None:
        """Ends `owner`'s registration; a no-op if it is not registered."""

    def note_running(self, owner: str, pgid: int | None, defer: bool = False) -> None:
        """Records the process group of `owner`'s running command, so a recovery can end it.

        With `defer`, a backend may keep it for the next record it writes about `owner` (the
        held result the worker writes next); the caller then calls again without `defer`, which
        writes it unless that record did.
        """

    @abstractmethod
    def register_manager(self, info: ManagerInfo) -> None:
        """Lists a running `start` process until it unregisters or dies."""

    @abstractmethod
    def unregister_manager(self, manager_id: str) -> None:
        """Removes a manager from the list; a no-op if it is not listed."""

    @abstractmethod
    def managers(self) -> list[ManagerInfo]:
        """The live managers; dead ones are never listed. [] when none run."""

    @abstractmethod
    def request_stop(self, force: bool = False) -> None:
        """Asks every manager running now to stop (force: end running jobs at once).

        Managers started later are not affected.
        """

    @abstractmethod
    def stop_requested(self, since: float) -> str | None:
        """'graceful' or 'force' if a stop was requested at or after `since`; None otherwise."""

    # -- scheduling aids -------------------------------------------------------------------
    @abstractmethod
    def unique_holder(self, key: str) -> str | None:
        """The id of the job a unique key was last given to; None if never."""

    @abstractmethod
    def reserve_unique(self, key: str, job_id: str, expected: str | None) -> bool:
        """Gives `key` to `job_id` if it is still held by `expected` (None: by nobody).

        One atomic compare-and-set: of concurrent callers with the same `expected`, one wins.
        """

    @abstractmethod
    def add_dependant(self, dependency: str, job_id: str) -> None:
        """Records that `job_id` waits for `dependency`."""

    @abstractmethod
    def dependants(self, dependency: str) -> list[str]:
        """Ids of the jobs that wait for `dependency`; [] when none."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> None:
        """Asks the worker running `job_id` to end it."""

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool:
        """Whether `job_id` has a pending cancel request (cheap: workers ask often)."""

    @abstractmethod
    def clear_cancel(self, job_id: str) -> None:
        """Forgets a cancel request; a no-op if there is none."""

    @abstractmethod
    def take_start_slot(self, rate: float, now: float | None = None) -> float:
        """Rate limit shared by every worker of the store: `rate` job starts per second.

        Returns 0.0 when a job may start now (and the slot is taken), otherwise the seconds to
        wait before asking again. `now` None means the time the slot is taken (after any wait
        for other workers): a time read before that wait would let the next job start early.
        """

    @abstractmethod
    def metrics(self) -> dict[str, Any]:
        """The running aggregates kept by `core/metrics.py` (updated with every state change)."""

    # -- output ----------------------------------------------------------------------------
    def output_paths(self, job_id: str, attempt: int) -> tuple[str, str]:
        """Files for an attempt's stdout and stderr. Default: a private temp folder."""
        folder = getattr(self, "_output_dir", None)
        if folder is None:
            import tempfile

            folder = tempfile.mkdtemp(prefix="queuectl-output-")
            self._output_dir = folder
        base = os.path.join(folder, f"{job_id}.{attempt}")
        return base + ".out", base + ".err"

    def log_dir(self) -> str:
        """A private folder for the logs of background managers. Default: a temp folder."""
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), f"queuectl-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return folder

    # -- wake-ups ------------------------------------------------------------------------
    def wait_for_work(self, owner: str, timeout: float) -> None:
        """Blocks up to `timeout` seconds or until new work may be there. Default: sleeps."""
        time.sleep(timeout)

    def notify_work(self, count: int = 1) -> None:
        """Wakes up to `count` idle workers after new work arrives. Default: nothing (they poll)."""


def host_id() -> str:
    """This host's name in ids and listings (QUEUECTL_HOST_ID overrides the machine's)."""
    name = os.environ.get("QUEUECTL_HOST_ID")
    if name:
        return name
    if hasattr(os, "uname"):  # gethostname's own source on POSIX, without importing socket (7 ms)
        return os.uname().nodename
    import socket

    return socket.gethostname()


def new_owner_id(kind: str) -> str:
    """Unique for all time, so a dead owner's id is never reused by a live one."""
    host = host_id().split(".")[0].replace("_", "-")[:20] or "host"
    return f"{kind}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def get_storage(path: str) -> Storage:
    """The backend for `path`: `memory://` for tests, `redis://` or `rediss://`, else a JSON directory."""
    if path.startswith("memory://"):
        from .backends.memory_backend import MemoryStorage
        return MemoryStorage.named(path)
    if path.startswith(("redis://", "rediss://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            from .errors import StorageError
            raise StorageError("the Redis backend needs redis-py: install the redis extra: "
                               "pip install -e '.[redis]'") from None
        from .backends.redis_backend import RedisStorage
        return RedisStorage(path)
    from .backends.json_backend import JsonStorage
    return JsonStorage(path)
