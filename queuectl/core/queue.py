"""QueueManager: the queue's rules (retries, backoff, the DLQ, recovery) over any Storage."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from . import metrics
from .errors import ConflictError, DuplicateJobError, InvalidStateError, JobNotFoundError, ValidationError
from .job import (
    BLOCKED,
    COMPLETED,
    DEAD,
    FAILED,
    MAX_HISTORY,
    PENDING,
    PROCESSING,
    Job,
    JobState,
    backoff_delay,
    check_spec,
    is_spec,
    now_iso,
    parse_duration,
    parse_iso,
    parse_spec,
    validate_command,
    validate_id,
)
from .storage import ManagerInfo, Storage
from .utils.config import Config, validate_assignment
from .utils.log import get_logger

log = get_logger(__name__)

# A unique key stays taken while its job is in one of these states.
LIVE_STATES = (PENDING, FAILED, PROCESSING)
# Seconds a unique key reserved by an enqueue whose job is not stored yet stays taken.
UNIQUE_GRACE = 30.0
# Trimming by count starts once there are this much more completed jobs than kept, so it runs
# in batches rather than on every completion.
TRIM_SLACK = 1.1
# How many candidates an ambiguous id error names before "...".
AMBIGUOUS_SHOWN = 5


@dataclass
class Outcome:
    """What one attempt did, as the worker saw it."""

    exit_code: int | None
    error: str | None = None
    timed_out: bool = False
    cancelled: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class RetryAll:
    """What `dlq retry --all` did: the jobs moved back to pending, and those it left in the DLQ
    with the reason (a unique key another job holds, a dependency that stayed dead)."""

    retried: list[Job]
    left: list[tuple[str, str]]


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
            # the backend's display name: never a password, whatever the user typed
            self._config = Config(self.storage.load_config(), self.storage.display)
            for problem in self._config.ignored:
                log.warning("Ignoring a stored setting (%s); its default applies", problem)
        return self._config

    def set_config(self, key: str, raw: Any) -> tuple[str, Any]:
        key, value = validate_assignment(key, raw)
        values = self.config.stored()
        values[key] = value
        self.storage.save_config(values)
        self._config = None
        return key, value

    # -- enqueue -------------------------------------------------------------------------
    def build_job(self, text: str, max_retries: int | None = None, **options: Any) -> Job:
        """A new job from a command line or a JSON spec, plus options that override the spec.

        ValidationError if anything is malformed. Dependencies are not looked up here.
        """
        spec = parse_spec(text) if is_spec(text) else {"command": validate_command(text)}
        given = {k: v for k, v in options.items() if v is not None}
        if max_retries is not None:
            given["max_retries"] = max_retries
        if given:  # `enqueue --file` gives none, and checks thousands of lines
            checked = check_spec(given)
            if "run_at" in checked or "delay" in checked:  # the option's time replaces the spec's
                spec.pop("run_at", None)
                spec.pop("delay", None)
            spec.update(checked)
        if "run_at" in spec and "delay" in spec:
            raise ValidationError("give run_at or delay, not both")
        job = Job.new(spec["command"], spec.get("max_retries", self.config.max_retries),
                      job_id=spec.get("id"), priority=spec.get("priority", 0), timeout=spec.get("timeout"),
                      no_retry_on=spec.get("no_retry_on"), after=spec.get("after", []),
                      unique_key=spec.get("unique_key"))
        if "run_at" in spec:
            job.due_at = spec["run_at"]
        elif "delay" in spec:
            job.due_at = time.time() + spec["delay"]
        return job

    def enqueue(self, text: str, max_retries: int | None = None, **options: Any) -> Job:
        return self.submit(text, max_retries, **options)[0]

    def submit(self, text: str, max_retries: int | None = None, **options: Any) -> tuple[Job, bool]:
        """Stores a new job; (job, True) if a unique key found a live job already queued instead."""
        job = self.build_job(text, max_retries, **options)
        if job.after:
            job.after = list(dict.fromkeys(self.resolve(ref).id for ref in job.after))  # id and its prefix: once
            if job.id in job.after:
                raise ValidationError("a job cannot wait for itself")
        if job.unique_key:
            existing = self._reserve_unique(job)
            if existing is not None:
                return existing, True
        if job.after:
            self._add_with_dependencies(job)
        else:
            self.storage.add(job)
        if not self.storage.wakes_on_add:
            self.storage.notify_work()
        if job.after:
            return self.storage.get(job.id) or job, False  # a dependency may have moved it on
        return job, False

    def _reserve_unique(self, job: Job) -> Job | None:
        """Gives the job its unique key, or returns the live job that holds it.

        The key's value is "<id>@<time reserved>": a holder whose job is not stored yet is an
        enqueue in flight, and counts as live for UNIQUE_GRACE seconds (after that, an enqueue
        that died between reserving and storing).
        """
        assert job.unique_key is not None
        while True:
            raw = self.storage.unique_holder(job.unique_key)
            holder, _, reserved = (raw or "").partition("@")
            current = self.storage.get(holder) if holder else None
            if current is not None and current.state in LIVE_STATES:
                return current
            if current is None and holder and time.time() - _float(reserved) < UNIQUE_GRACE:
                time.sleep(0.01)  # its enqueue is still writing the job: look again
                continue
            if self.storage.reserve_unique(job.unique_key, f"{job.id}@{time.time():.3f}", raw):
                return None

    def _other_holder(self, job: Job) -> Job | None:
        """A job leaving the DLQ takes its unique key back: None once it holds it, or the other
        live job that holds it meanwhile."""
        if not job.unique_key:
            return None
        holder = self._reserve_unique(job)
        return holder if holder is not None and holder.id != job.id else None

    def _dead_dependency(self, job: Job) -> str | None:
        """The first of the job's dependencies that is in the DLQ, if any."""
        return next((ref for ref in job.after if (d := self.storage.get(ref)) is not None and d.state is DEAD), None)

    def _purged_dependency(self, job: Job) -> str | None:
        """A dependency that was purged from the DLQ while the job waited for it, if it is
        still gone (see `_orphan_dependants`)."""
        return next((ref for ref in purged_dependencies(job) if self.storage.get(ref) is None), None)

    def _orphan_dependants(self, job: Job) -> None:
        """Before a dead job is deleted: the jobs in the DLQ that wait for it are marked, so that
        neither their retry nor another dependency's runs them. A missing dependency counts as
        completed (one that `keep_completed` purged); this one never completed.

        Only jobs that never ran: one that ran found its dependencies completed, and a dead job
        of the same id, enqueued after the first was purged, is not the one it waited for. The
        mark names every dependency purged so far. It is written first: a purge killed between
        the two leaves the dependency in the DLQ and the marked jobs where they were, to be
        retried by hand once it is back.
        """
        if job.state is not DEAD:
            return
        for ref in self.storage.dependants(job.id):
            dependant = self.storage.get(ref)
            if dependant is None or dependant.state is not DEAD or job.id not in dependant.after \
                    or dependant.history:
                continue
            gone = [d for d in dependant.after if d == job.id or d in purged_dependencies(dependant)]
            try:
                self.storage.update(dependant, dependant.evolve(last_error=purged_error(gone)))
            except ConflictError:
                continue  # retried or purged meanwhile

    def _add_with_dependencies(self, job: Job) -> None:
        deps = [self.storage.get(ref) for ref in job.after]
        if all(dep is not None and dep.state is COMPLETED for dep in deps):
            self.storage.add(job)
            return
        job.due_at = BLOCKED
        # Recorded first, so a dependency finishing meanwhile still sees us; recorded for a dead
        # dependency too, so that its retry from the DLQ brings this job back.
        for ref in job.after:
            self.storage.add_dependant(ref, job.id)
        self.storage.add(job)
        self._settle(job.id)  # a dependency may have finished (or died) while we were adding

    def enqueue_many(self, texts: Iterable[str]) -> list[Job]:
        """All or nothing: a bad spec stores none; blank lines are skipped. The specs are
        checked as the storage takes them, which may be while it writes the first ones."""
        jobs: list[Job] = []
        seen: dict[str, int] = {}  # id -> its line

        def checked() -> Iterator[Job]:
            for n, text in enumerate(texts, 1):
                if not text.strip():
                    continue
                try:
                    job = self.build_job(text)
                    if job.after or job.unique_key:
                        raise ValidationError("'after' and 'unique_key' need one enqueue per job, not --file")
                except ValidationError as e:
                    raise ValidationError(f"line {n}: {e}") from None
                if job.id in seen:
                    raise ValidationError(f"line {n}: duplicate id '{job.id}'")
                seen[job.id] = n
                jobs.append(job)
                yield job

        try:
            self.storage.add_many(checked())
        except DuplicateJobError as e:  # an id already stored: name its line, as for a bad one
            if e.job_id not in seen:
                raise
            raise DuplicateJobError(f"line {seen[e.job_id]}: {e}", e.job_id) from None
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

    def page(self, state: JobState | None, limit: int, offset: int = 0) -> tuple[int, list[Job]]:
        """The `limit` newest jobs after skipping the `offset` newest (oldest first), and the total."""
        return self.storage.page(state, limit, offset)

    def counts(self) -> dict[JobState, int]:
        return self.storage.counts()

    def managers(self) -> list[ManagerInfo]:
        return self.storage.managers()

    def metrics(self) -> dict[str, Any]:
        """The `metrics` report, from running aggregates (see core/metrics.py)."""
        managers = self.managers()
        counts = {s.value: n for s, n in self.counts().items()}
        return metrics.summary(self.storage.metrics(), counts, self.storage.oldest_waiting(),
                               len(managers), sum(m.workers for m in managers), time.time())

    def prometheus(self) -> str:
        return metrics.prometheus(self.storage.metrics(), self.metrics())

    def output(self, job: Job, attempt: int | None = None) -> tuple[int, str, str]:
        """(attempt, stdout path, stderr path) of an attempt, the latest by default."""
        # A retry from the DLQ or a forced stop sets `attempts` back; the attempts made before
        # are still in the history, with their output.
        made = max([job.attempts] + [h.get("attempt") or 0 for h in job.history if isinstance(h, dict)])
        if not made:
            raise JobNotFoundError(f"job {job.id} has not run yet (it is {job.state.value})")
        attempt = attempt or job.attempts or made
        if attempt < 1 or attempt > made:
            raise JobNotFoundError(f"job {job.id} has no attempt {attempt} (it has made {made})")
        out, err = self.storage.output_paths(job.id, attempt)
        return attempt, out, err

    def wait(self, job_id: str, poll: float = 0.1) -> Job:
        """Blocks until the job is completed or dead."""
        while True:
            job = self.storage.get(job_id)
            if job is None:
                raise JobNotFoundError(f"job {job_id} disappeared while we waited")
            if job.state in (COMPLETED, DEAD):
                return job
            time.sleep(poll)

    # -- running -------------------------------------------------------------------------
    def claim(self, owner: str, before_start: Callable[[], None] | None = None) -> Job | None:
        """Takes the next due job for `owner` and records the attempt's start.

        `before_start` runs between taking the job and recording its start (the rate limit waits
        there, so `started_at` is the real start).
        """
        while True:
            job = self.storage.claim(owner, time.time())
            if job is None:
                return None
            if before_start is not None:
                before_start()
            stamp = now_iso()
            started = job.evolve(attempts=job.attempts + 1, started_at=stamp, updated_at=stamp,
                                 finished_at=None, worker_id=owner)
            try:
                self.storage.update(job, started)
            except ConflictError:
                continue
            return started

    def finish(self, job: Job, outcome: Outcome) -> Job:
        """Records an attempt's end: completed, failed (with its due time) or dead."""
        new = self.result(job, outcome)
        self.storage.update(job, new)
        if new.state in (COMPLETED, DEAD) and self.storage.dependants(job.id):
            self.storage.flush()  # the result must be visible before the waiting jobs look at it
            self._settle_dependants(job.id)
        return new

    def result(self, job: Job, outcome: Outcome) -> Job:
        """What a job becomes after an attempt ended with `outcome`: completed, failed (with its
        due time) or dead."""
        entry = _attempt_entry(job, outcome)
        history = (job.history + [entry])[-MAX_HISTORY:]
        common: dict[str, Any] = {"finished_at": entry["finished_at"], "updated_at": entry["finished_at"],
                                  "history": history, "exit_code": outcome.exit_code}
        no_retry = job.no_retry_on if job.no_retry_on is not None else self.config.no_retry_on
        if outcome.ok:
            new = job.evolve(state=COMPLETED, last_error=None, **common)
        elif outcome.cancelled or job.attempts > job.max_retries or (
                not outcome.timed_out and outcome.exit_code in no_retry):
            new = job.evolve(state=DEAD, last_error=outcome.error, **common)
        else:
            cfg = self.config
            delay = backoff_delay(job.attempts, cfg.backoff_base, cfg.backoff_max)
            new = job.evolve(state=FAILED, last_error=outcome.error,
                             due_at=time.time() + delay, **common)
        return new

    def completed_rule(self, job: Job, finished: float) -> Job:
        """A worker died after this job's attempt ended well, before it wrote the result (it
        held it, see `Storage.hold_result`): the job is completed, as the worker would have
        recorded it."""
        try:
            started = parse_iso(job.started_at) if job.started_at else 0.0
        except ValueError:
            started = 0.0
        return self.result(job, Outcome(exit_code=0, started=started, finished=finished))

    # -- dependencies --------------------------------------------------------------------
    def _settle_dependants(self, job_id: str) -> None:
        for dependant in self.storage.dependants(job_id):
            self._settle(dependant)

    def _settle(self, job_id: str) -> None:
        """Unblocks a waiting job whose dependencies all completed, or fails it if one died."""
        for _ in range(3):  # a conflict means someone else moved it: look again
            job = self.storage.get(job_id)
            if job is None or job.state is not PENDING or not job.blocked:
                return
            deps = [self.storage.get(ref) for ref in job.after]
            dead = next((ref for ref, d in zip(job.after, deps) if d is not None and d.state is DEAD), None)
            try:
                if dead is not None:
                    self.storage.update(job, job.evolve(state=DEAD, last_error=f"Dependency {dead} failed",
                                                        finished_at=now_iso()))
                    self._settle_dependants(job.id)
                elif all(d is None or d.state is COMPLETED for d in deps):
                    self.storage.update(job, job.evolve(due_at=time.time()))
                    self.storage.notify_work()
                return
            except ConflictError:
                continue

    def _revive_dependants(self, job_id: str) -> None:
        """A dependency left the DLQ: jobs that died because a dependency did wait again, once
        none of their dependencies is left in the DLQ (else they would only die again) and no
        other live job has taken their unique key meanwhile."""
        for ref in self.storage.dependants(job_id):
            job = self.storage.get(ref)
            if job is None or job.state is not DEAD or \
                    job.last_error not in {f"Dependency {dep} failed" for dep in job.after}:
                continue
            if self._dead_dependency(job) is not None:
                continue
            holder = self._other_holder(job)
            if holder is not None:
                log.warning("Job %s stays in the DLQ: job %s holds its unique key", job.id, holder.id)
                continue
            try:
                self.storage.update(job, job.evolve(state=PENDING, due_at=BLOCKED, last_error=None))
            except ConflictError:
                continue
            self._revive_dependants(job.id)
            self._settle(job.id)

    def release(self, job: Job, reason: str) -> Job:
        """Puts an interrupted job back as pending; the cut-short attempt does not count."""
        entry = {"attempt": job.attempts, "started_at": job.started_at, "finished_at": now_iso(),
                 "worker": job.worker_id, "error": reason, "counted": False}
        new = job.evolve(state=PENDING, attempts=max(0, job.attempts - 1),
                         due_at=time.time(), worker_id=None, finished_at=entry["finished_at"],
                         history=(job.history + [entry])[-MAX_HISTORY:])
        self.storage.update(job, new)
        return new

    def prepare_start(self) -> list[Job]:
        """Housekeeping before workers start: debris of dead processes, kept counts, orphans."""
        self.storage.maintain()
        return self.recover()

    def recover(self, quiet: bool = False) -> list[Job]:
        """Returns the jobs of dead workers to the queue (see `orphan_rule`).

        `quiet` logs at info level: a CLI command that tidies up before its own work keeps its
        stderr for its own error.
        """
        recovered = self.storage.recover(self.orphan_rule, self.completed_rule)
        for job in recovered:
            (log.info if quiet else log.warning)("Recovered job %s from a dead process: now %s",
                                                 job.id, job.state.value)
            if job.state in (COMPLETED, DEAD):  # a held result is completed
                self._settle_dependants(job.id)
        return recovered

    @staticmethod
    def orphan_rule(job: Job) -> Job:
        """A worker died mid-attempt: the attempt counts, and the job runs again at once.

        An attempt has started when `started_at` is set and `finished_at` is not (every end of an
        attempt sets `finished_at`; its start clears it).

        Counting it means a command that kills its worker (say, by exhausting memory) ends in the
        DLQ instead of looping forever; running it at once means recovery adds no backoff delay.
        """
        if job.started_at is None or job.finished_at is not None:
            # Taken, but its attempt had not started (the start is recorded before the command
            # runs): nothing ran, so nothing counts and the job's last error stays its own.
            return job.evolve(state=PENDING, due_at=time.time(), worker_id=None)
        error = f"Worker died during attempt {job.attempts}"
        entry = {"attempt": job.attempts, "started_at": job.started_at, "finished_at": now_iso(),
                 "worker": job.worker_id, "error": error}
        history = (job.history + [entry])[-MAX_HISTORY:]
        if job.attempts > job.max_retries:
            return job.evolve(state=DEAD, last_error=error, history=history,
                              finished_at=entry["finished_at"])
        return job.evolve(state=PENDING, last_error=error, history=history,
                          due_at=time.time(), worker_id=None, finished_at=entry["finished_at"])

    # -- the DLQ and cleanup -------------------------------------------------------------
    def _resolve_settled(self, ref: str) -> Job:
        """`resolve`, after recovering the job if a dead process left it in processing (a killed
        `dlq retry` or `cancel`, say: without this, it waited there for the next `start`)."""
        job = self.resolve(ref)
        if job.state is PROCESSING and any(r.id == job.id for r in self.recover(quiet=True)):
            job = self.resolve(job.id)
        return job

    def retry_dead(self, ref: str | Job) -> Job:
        job = ref if isinstance(ref, Job) else self._resolve_settled(ref)
        if job.state is not DEAD:
            raise InvalidStateError(f"job {job.id} is {job.state.value}, not in the DLQ")
        dead = self._dead_dependency(job)
        if dead is not None:  # it would only die again; the retry of its last dead dependency brings it back
            raise InvalidStateError(f"job {job.id} waits for job {dead}, which is in the DLQ: retry {dead} first")
        gone = self._purged_dependency(job)
        if gone is not None:
            raise InvalidStateError(f"job {job.id} waits for job {gone}, which was purged from the DLQ: "
                                    f"it cannot run (enqueue it again without that dependency)")
        holder = self._other_holder(job)
        if holder is not None:
            raise InvalidStateError(f"job {holder.id} holds unique key '{job.unique_key}' "
                                    f"({holder.state.value}): not retrying {job.id}")
        new = job.evolve(state=PENDING, attempts=0, due_at=time.time(), worker_id=None)
        if job.after:
            new.due_at = BLOCKED
        try:
            self.storage.update(job, new)
        except ConflictError:
            raise InvalidStateError(f"job {job.id} left the DLQ while we retried it") from None
        if job.after:
            self._settle(job.id)
        self._revive_dependants(job.id)
        self.storage.notify_work()
        return new

    def retry_all_dead(self) -> RetryAll:
        retried = []
        refused: dict[str, str] = {}
        self.recover(quiet=True)  # jobs a killed command left in processing/ count as where they were
        for job in self.list_jobs(DEAD):
            try:
                retried.append(self.retry_dead(job))
            except InvalidStateError as e:
                refused[job.id] = str(e)  # or moved meanwhile (another retry, a revived dependant)
        # A job refused for a dependency still dead is brought back by that dependency's retry
        # later in the loop: only those still in the DLQ are left.
        left = [(job_id, reason) for job_id, reason in refused.items()
                if (job := self.storage.get(job_id)) is not None and job.state is DEAD]
        return RetryAll(retried, left)

    def cancellable(self, ref: str) -> Job:
        """The job `ref` names, if `cancel` can act on it: one that has not finished."""
        return _unfinished(self.resolve(ref))

    def cancel(self, ref: str, wait: float = 10.0) -> Job:
        """Moves a waiting job to the DLQ as `Cancelled`; a running one is ended first."""
        job = _unfinished(self._resolve_settled(ref))
        if job.state is PROCESSING:
            self.storage.request_cancel(job.id)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                current = self.storage.get(job.id)
                if current is None or current.state is not PROCESSING:
                    break
                time.sleep(0.05)
            self.storage.clear_cancel(job.id)
            current = self.storage.get(job.id)
            if current is None or current.state is PROCESSING:
                raise InvalidStateError(f"job {job.id} did not stop within {wait:.0f}s")
            if current.state is DEAD:
                return current
            job = current
            if job.state is COMPLETED:
                raise InvalidStateError(f"job {job.id} completed before it could be cancelled")
        new = job.evolve(state=DEAD, last_error="Cancelled", finished_at=now_iso(), worker_id=None)
        try:
            self.storage.update(job, new)
        except ConflictError:
            raise InvalidStateError(f"job {job.id} changed while we cancelled it; try again") from None
        self._settle_dependants(job.id)
        return new

    def purge(self, state: JobState, older_than: float | None = None) -> int:
        """Deletes completed or dead jobs (finished more than `older_than` seconds ago)."""
        if state not in (COMPLETED, DEAD):
            raise ValidationError("only completed or dead jobs can be purged")
        cutoff = time.time() - older_than if older_than is not None else None
        self.recover(quiet=True)
        return self._delete(j for j in self.list_jobs(state) if cutoff is None or _finished(j) <= cutoff)

    def _delete(self, jobs: Iterable[Job]) -> int:
        """Deletes the jobs that are still as read; returns how many went."""
        removed = 0
        for job in jobs:
            try:
                self._orphan_dependants(job)
                self.storage.delete(job)
                self._release_unique(job)
                removed += 1
            except ConflictError:
                continue  # moved meanwhile (retried, already purged)
        return removed

    def purge_dead(self, ref: str) -> Job:
        """Deletes one dead job (id or unique prefix) with its output; returns it as it was."""
        job = self._resolve_settled(ref)
        if job.state is not DEAD:
            raise InvalidStateError(f"job {job.id} is {job.state.value}, not in the DLQ")
        self._orphan_dependants(job)
        try:
            self.storage.delete(job)
        except ConflictError:
            raise InvalidStateError(f"job {job.id} left the DLQ while we purged it") from None
        self._release_unique(job)
        return job

    def _release_unique(self, job: Job) -> None:
        """Frees a deleted job's unique key at once: a reservation with no job behind it counts
        as an enqueue still writing its job for UNIQUE_GRACE seconds, and the next job to take
        the key (a `dlq retry`, an enqueue) waited that long."""
        if not job.unique_key:
            return
        raw = self.storage.unique_holder(job.unique_key)
        if raw is not None and raw.partition("@")[0] == job.id:
            self.storage.reserve_unique(job.unique_key, f"{job.id}@0", raw)  # reserved long ago

    def trim_completed(self) -> int:
        """Applies `keep_completed`: a count of jobs to keep, or an age like 7d; 0 keeps all."""
        keep = self.config.keep_completed
        if not keep:
            return 0
        if isinstance(keep, str):
            return self.purge(COMPLETED, parse_duration(keep, "keep_completed"))
        count = self.counts()[COMPLETED]
        if count <= keep * TRIM_SLACK:
            return 0
        jobs = sorted(self.list_jobs(COMPLETED), key=_finished)
        return self._delete(jobs[: max(0, len(jobs) - keep)])

    def request_stop(self, force: bool = False) -> list[ManagerInfo]:
        """Asks every running manager to stop; returns those that were running.

        The request is stored even when none is registered yet: a `start` launched before it but
        still starting up honours it (a `start` launched later never does).
        """
        running = self.managers()
        if running or self.storage.exists():  # `stop` alone does not create a store
            self.storage.request_stop(force)
        return running


def purged_error(job_ids: list[str]) -> str:
    """The last error of a job in the DLQ whose dependencies `job_ids` were purged from it."""
    if len(job_ids) == 1:
        return f"Dependency {job_ids[0]} was purged from the DLQ"
    return f"Dependencies {', '.join(job_ids)} were purged from the DLQ"


_PURGED = re.compile(r"Dependenc(?:y|ies) ([\w.,\- ]+) (?:was|were) purged from the DLQ")


def purged_dependencies(job: Job) -> list[str]:
    """The dependencies that `purged_error` names in the job's last error (ids hold no comma)."""
    found = _PURGED.fullmatch(job.last_error or "")
    return [ref for ref in found[1].split(", ") if ref in job.after] if found else []


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _unfinished(job: Job) -> Job:
    if job.state in (COMPLETED, DEAD):
        raise InvalidStateError(f"job {job.id} is already {job.state.value}")
    return job


def _finished(job: Job) -> float:
    try:
        return parse_iso(job.finished_at or job.updated_at)
    except ValueError:
        return 0.0


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
