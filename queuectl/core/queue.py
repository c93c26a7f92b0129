"""QueueManager: the queue's rules (retries, backoff, the DLQ, recovery) over any Storage."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import ConflictError, InvalidStateError, JobNotFoundError, ValidationError
from .job import (
    MAX_HISTORY,
    Job,
    JobState,
    backoff_delay,
    is_spec,
    now_iso,
    parse_spec,
    validate_command,
    validate_id,
    validate_retries,
)
from .storage import ManagerInfo, Storage
from .utils.config import Config, validate_assignment

log = logging.getLogger(__name__)

# How many candidates an ambiguous id error names before "...".
AMBIGUOUS_SHOWN = 5


@dataclass
class Outcome:
    """What one attempt did, as the worker saw it."""

    exit_code: int | None
    error: str | None = None
    timed_out: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class QueueManager:
    """Every operation on the queue; the CLI, the workers and the dashboard all go through it."""

    def __init__(self, storage: Storage, storage_path: str | None = None):
        self.storage = storage
        self.storage_path = storage_path or storage.display
        self._config: Config | None = None

    # -- settings ------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config(self.storage.load_config(), self.storage_path)
        return self._config

    def set_config(self, key: str, raw: Any) -> tuple[str, Any]:
        key, value = validate_assignment(key, raw)
        values = self.config.stored()
        values[key] = value
        self.storage.save_config(values)
        self._config = None
        return key, value

    # -- enqueue -------------------------------------------------------------------------
    def build_job(self, text: str, max_retries: int | None = None) -> Job:
        """A new job from a command line or a JSON spec; ValidationError if it is malformed."""
        if is_spec(text):
            spec = parse_spec(text)
        else:
            spec = {"command": validate_command(text)}
        if max_retries is not None:
            spec["max_retries"] = validate_retries(max_retries)
        return Job.new(spec["command"], spec.get("max_retries", self.config.max_retries),
                       job_id=spec.get("id"))

    def enqueue(self, text: str, max_retries: int | None = None) -> Job:
        job = self.build_job(text, max_retries)
        self.storage.add(job)
        self.storage.notify_work()
        log.debug("Job %s enqueued: %s", job.id, job.command)
        return job

    def enqueue_many(self, texts: Iterable[str]) -> list[Job]:
        """All or nothing: every spec is checked before the first is stored; blank lines are skipped."""
        jobs = []
        seen: set[str] = set()
        for n, text in enumerate(texts, 1):
            if not text.strip():
                continue
            try:
                job = self.build_job(text)
            except ValidationError as e:
                raise ValidationError(f"line {n}: {e}") from None
            if job.id in seen:
                raise ValidationError(f"line {n}: duplicate id '{job.id}'")
            seen.add(job.id)
            jobs.append(job)
        self.storage.add_many(jobs)
        self.storage.notify_work(len(jobs))
        return jobs

    # -- reading -------------------------------------------------------------------------
    def resolve(self, ref: str) -> Job:
        """The job named by a full id or a unique prefix of one."""
        ref = ref.strip()
        try:
            validate_id(ref)
        except ValidationError:
            raise ValidationError(f"'{ref}' is not a valid job id") from None
        job = self.storage.get(ref)
        if job is not None:
            return job
        matches = self.storage.match_ids(ref)
        if not matches:
            raise JobNotFoundError(f"no job with id '{ref}'")
        if len(matches) > 1:
            shown = ", ".join(matches[:AMBIGUOUS_SHOWN]) + (", ..." if len(matches) > AMBIGUOUS_SHOWN else "")
            raise JobNotFoundError(f"'{ref}' matches {len(matches)} jobs: {shown}")
        job = self.storage.get(matches[0])
        if job is None:
            raise JobNotFoundError(f"no job with id '{ref}'")
        return job

    def list_jobs(self, state: JobState | None = None) -> list[Job]:
        return list(self.storage.jobs(state))

    def counts(self) -> dict[JobState, int]:
        return self.storage.counts()

    def managers(self) -> list[ManagerInfo]:
        return self.storage.managers()

    # -- running -------------------------------------------------------------------------
    def claim(self, owner: str) -> Job | None:
        """Takes the next due job for `owner` and records the attempt's start."""
        while True:
            job = self.storage.claim(owner, time.time())
            if job is None:
                return None
            started = job.evolve(attempts=job.attempts + 1, started_at=now_iso(), finished_at=None,
                                 worker_id=owner)
            try:
                self.storage.update(job, started)
            except ConflictError:
                continue
            return started

    def finish(self, job: Job, outcome: Outcome) -> Job:
        """Records an attempt's end: completed, failed (with its due time) or dead."""
        entry = _attempt_entry(job, outcome)
        history = (job.history + [entry])[-MAX_HISTORY:]
        common: dict[str, Any] = {"finished_at": entry["finished_at"], "history": history,
                                  "exit_code": outcome.exit_code}
        if outcome.ok:
            new = job.evolve(state=JobState.COMPLETED, last_error=None, **common)
        elif job.attempts > job.max_retries:
            new = job.evolve(state=JobState.DEAD, last_error=outcome.error, **common)
        else:
            cfg = self.config
            delay = backoff_delay(job.attempts, cfg.backoff_base, cfg.backoff_max)
            new = job.evolve(state=JobState.FAILED, last_error=outcome.error,
                             due_at=time.time() + delay, **common)
        self.storage.update(job, new)
        return new

    def release(self, job: Job, reason: str) -> Job:
        """Puts an interrupted job back as pending; the cut-short attempt does not count."""
        entry = {"attempt": job.attempts, "started_at": job.started_at, "finished_at": now_iso(),
                 "worker": job.worker_id, "error": reason, "counted": False}
        new = job.evolve(state=JobState.PENDING, attempts=max(0, job.attempts - 1),
                         due_at=time.time(), worker_id=None,
                         history=(job.history + [entry])[-MAX_HISTORY:])
        self.storage.update(job, new)
        return new

    def prepare_start(self) -> list[Job]:
        """Housekeeping before workers start: debris of dead processes, kept counts, orphans."""
        self.storage.maintain()
        return self.recover()

    def recover(self) -> list[Job]:
        """Returns the jobs of dead workers to the queue (see `orphan_rule`)."""
        recovered = self.storage.recover(self.orphan_rule)
        for job in recovered:
            log.warning("Recovered job %s from a dead worker: now %s", job.id, job.state.value)
        return recovered

    @staticmethod
    def orphan_rule(job: Job) -> Job:
        """A worker died mid-attempt: the attempt counts, and the job runs again at once.

        Counting it means a command that kills its worker (say, by exhausting memory) ends in the
        DLQ instead of looping forever; running it at once means recovery adds no backoff delay.
        """
        error = f"Worker died during attempt {job.attempts}"
        entry = {"attempt": job.attempts, "started_at": job.started_at, "finished_at": now_iso(),
                 "worker": job.worker_id, "error": error}
        history = (job.history + [entry])[-MAX_HISTORY:]
        if job.attempts > job.max_retries:
            return job.evolve(state=JobState.DEAD, last_error=error, history=history,
                              finished_at=entry["finished_at"])
        return job.evolve(state=JobState.PENDING, last_error=error, history=history,
                          due_at=time.time(), worker_id=None)

    # -- the DLQ -------------------------------------------------------------------------
    def retry_dead(self, ref: str) -> Job:
        job = self.resolve(ref)
        if job.state is not JobState.DEAD:
            raise InvalidStateError(f"job {job.id} is {job.state.value}, not in the DLQ")
        new = job.evolve(state=JobState.PENDING, attempts=0, due_at=time.time(), worker_id=None)
        try:
            self.storage.update(job, new)
        except ConflictError:
            raise InvalidStateError(f"job {job.id} left the DLQ while we retried it") from None
        self.storage.notify_work()
        return new

    def request_stop(self) -> list[ManagerInfo]:
        """Asks every running manager to stop; returns those that were running."""
        running = self.managers()
        if running:
            self.storage.request_stop()
        return running


def _attempt_entry(job: Job, outcome: Outcome) -> dict[str, Any]:
    return {
        "attempt": job.attempts,
        "started_at": job.started_at,
        "finished_at": now_iso(outcome.finished or None),
        "duration": round(max(0.0, outcome.finished - outcome.started), 3) if outcome.started else None,
        "exit_code": outcome.exit_code,
        "timed_out": outcome.timed_out,
        "worker": job.worker_id,
        "error": None if outcome.ok else outcome.error,
    }
