"""An in-process backend: fast worker tests, and the reference for the storage contract."""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from .. import metrics
from ..errors import ConflictError, DuplicateJobError
from ..job import Job, JobState
from ..storage import ManagerInfo, Storage

_NAMED: dict[str, MemoryStorage] = {}


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self.display = "memory://"
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._config: dict[str, Any] = {}
        self._owners: set[str] = set()
        self._managers: dict[str, ManagerInfo] = {}
        self._stop: tuple[float, bool] = (0.0, False)
        self._unique: dict[str, str] = {}
        self._deps: dict[str, set[str]] = {}
        self._cancels: set[str] = set()
        self._held: dict[str, dict[str, float]] = {}  # owner -> {job id: when it ended}
        self._next_start = 0.0
        self._metrics = metrics.empty()
        self._wake = threading.Condition(self._lock)

    @classmethod
    def named(cls, name: str) -> MemoryStorage:
        """One shared instance per name, so several managers in a test see one queue."""
        if name not in _NAMED:
            _NAMED[name] = cls()
            _NAMED[name].display = name
        return _NAMED[name]

    def exists(self) -> bool:
        return True

    def load_config(self) -> dict[str, Any]:
        return dict(self._config)

    def save_config(self, values: dict[str, Any]) -> None:
        self._config = dict(values)

    def add(self, job: Job) -> None:
        with self._lock:
            if job.id in self._jobs:
                raise DuplicateJobError(f"a job with id '{job.id}' already exists", job.id)
            self._jobs[job.id] = copy.deepcopy(job)
        self.notify_work()

    def add_many(self, jobs: Iterable[Job]) -> None:
        """All or nothing, as every backend's."""
        jobs = list(jobs)
        with self._lock:
            seen: set[str] = set()
            for job in jobs:
                if job.id in self._jobs or job.id in seen:
                    raise DuplicateJobError(f"a job with id '{job.id}' already exists", job.id)
                seen.add(job.id)
            self._jobs.update((job.id, copy.deepcopy(job)) for job in jobs)
        self.notify_work(len(jobs))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job else None

    def match_ids(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(i for i in self._jobs if i.startswith(prefix))

    def jobs(self, state: JobState | None = None) -> Iterator[Job]:
        with self._lock:
            found = [copy.deepcopy(j) for j in self._jobs.values() if state in (None, j.state)]
        return iter(sorted(found, key=lambda j: (j.seq, j.id)))

    def counts(self) -> dict[JobState, int]:
        counts = {s: 0 for s in JobState}
        with self._lock:
            for job in self._jobs.values():
                counts[job.state] += 1
        return counts

    def claim(self, owner: str, now: float) -> Job | None:
        with self._lock:
            due = [j for j in self._jobs.values() if j.state.runnable and j.due_at <= now]
            if not due:
                return None
            job = min(due, key=lambda j: (-j.priority, j.seq, j.id))
            job.state, job.worker_id = JobState.PROCESSING, owner
            return copy.deepcopy(job)

    def update(self, old: Job, new: Job) -> None:
        with self._lock:
            current = self._jobs.get(old.id)
            if current is None or current.state is not old.state or (
                    old.state is JobState.PROCESSING and current.worker_id != old.worker_id):
                raise ConflictError(f"job {old.id} changed while we worked on it")
            self._jobs[old.id] = copy.deepcopy(new)
            metrics.apply(self._metrics, old, new, time.time())
            if old.state is JobState.PROCESSING and new.state is not JobState.PROCESSING:
                self._held.get(old.worker_id or "", {}).pop(old.id, None)
        if new.state.runnable:
            self.notify_work()

    def hold_result(self, owner: str, job: Job, finished: float) -> bool:
        with self._lock:
            self._held.setdefault(owner, {})[job.id] = finished
        return True

    def recover(self, decide: Callable[[Job], Job],
                completed: Callable[[Job, float], Job] | None = None) -> list[Job]:
        with self._lock:
            orphans = [copy.deepcopy(j) for j in self._jobs.values()
                       if j.state is JobState.PROCESSING and j.worker_id not in self._owners]
            results = []
            for job in orphans:
                ended = self._held.get(job.worker_id or "", {}).get(job.id)
                new = completed(job, ended) if ended is not None and completed else decide(job)
                self.update(job, new)
                results.append(new)
            for owner in [o for o in self._held if o not in self._owners]:
                del self._held[owner]
            return results

    def register_owner(self, owner: str) -> None:
        self._owners.add(owner)

    def unregister_owner(self, owner: str) -> None:
        self._owners.discard(owner)

    def register_manager(self, info: ManagerInfo) -> None:
        self._managers[info.id] = info

    def unregister_manager(self, manager_id: str) -> None:
        self._managers.pop(manager_id, None)

    def managers(self) -> list[ManagerInfo]:
        return sorted(self._managers.values(), key=lambda m: m.started_at)

    def delete(self, job: Job) -> None:
        with self._lock:
            current = self._jobs.get(job.id)
            if current is None or current.state is not job.state or current.state is JobState.PROCESSING:
                raise ConflictError(f"job {job.id} changed while we worked on it")
            del self._jobs[job.id]

    def request_stop(self, force: bool = False) -> None:
        self._stop = (time.time(), force)

    def stop_requested(self, since: float) -> str | None:
        at, force = self._stop
        if at and at >= since:
            return "force" if force else "graceful"
        return None

    def unique_holder(self, key: str) -> str | None:
        return self._unique.get(key)

    def reserve_unique(self, key: str, job_id: str, expected: str | None) -> bool:
        with self._lock:
            if self._unique.get(key) != expected:
                return False
            self._unique[key] = job_id
            return True

    def add_dependant(self, dependency: str, job_id: str) -> None:
        with self._lock:
            self._deps.setdefault(dependency, set()).add(job_id)

    def dependants(self, dependency: str) -> list[str]:
        with self._lock:
            return sorted(self._deps.get(dependency, ()))

    def request_cancel(self, job_id: str) -> None:
        self._cancels.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancels

    def clear_cancel(self, job_id: str) -> None:
        self._cancels.discard(job_id)

    def take_start_slot(self, rate: float, now: float | None = None) -> float:
        if rate <= 0:
            return 0.0
        with self._lock:
            if now is None:
                now = time.time()
            if self._next_start > now:
                return self._next_start - now
            self._next_start = max(self._next_start, now) + 1 / rate
            return 0.0

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._metrics)

    def wait_for_work(self, owner: str, timeout: float) -> None:
        with self._wake:
            self._wake.wait(timeout)

    def notify_work(self, count: int = 1) -> None:
        with self._wake:
            self._wake.notify_all()
