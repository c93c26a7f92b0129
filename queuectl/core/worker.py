"""Worker (one process that runs jobs) and WorkerPool (the `start` process that supervises them).

Signals only set flags. The first SIGINT/SIGTERM, `queuectl stop` or the end of
`start --timeout` asks workers to finish their current job and exit; a second SIGINT/SIGTERM
makes them end their jobs' process groups and return those jobs to pending.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConflictError, QueuectlError
from .job import DEAD, MILLIS, Job, printable
from .output import CappedFile, Pump, tail_line
from .queue import Outcome, QueueManager
from .storage import ManagerInfo, Storage, get_storage, host_id, new_owner_id
from .utils.proc import (
    describe_exit,
    exit_fd,
    kill_group,
    killed_before_exec,
    name_this_process,
    run_as_batch,
    run_marks,
    spawn_shell,
)

log = logging.getLogger(__name__)

SELECTABLE_PIPES = os.name == "posix"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
# TERM, then KILL this many seconds later, for a job that timed out or is force-stopped.
KILL_GRACE = 2.0
# The supervisor looks for dead workers, stop requests and orphaned jobs this often.
SUPERVISE_INTERVAL = 0.1
RECOVER_INTERVAL = 1.0
# Completed jobs beyond `keep_completed` are removed this often.
TRIM_INTERVAL = 60.0
# A worker that dies this soon after it started is restarted only after this delay, so a
# broken environment does not become a fork loop.
RESPAWN_BACKOFF = 1.0
# Starts of one command that a signal to the worker's process group may cut short (see `_spawn`).
SPAWN_TRIES = 10


class SharedFlag:
    """A flag that the `start` process and its workers share: set once, read before every job.

    multiprocessing's Event reads through a condition and a semaphore, some 5,000 instructions
    a read and three reads a job; this is one byte of shared memory, read like an attribute.
    Setting it takes no lock, so a signal handler may set it.
    """

    def __init__(self, ctx: Any):
        self._byte = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._byte.value = 1

    def is_set(self) -> bool:
        return self._byte.value != 0


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs, picklable: each worker opens its own storage."""

    storage_path: str
    name: str
    log_level: str = "INFO"


class Worker:
    """Runs jobs one at a time. `run_once` is one claim-execute-record step."""

    def __init__(self, manager: QueueManager, name: str = "worker-1",
                 stop: Any = None, force: Any = None, owner: str | None = None):
        self.manager = manager
        self.storage: Storage = manager.storage
        self.name = name
        self.owner = owner or new_owner_id("worker")
        self.stop_event = stop if stop is not None else threading.Event()
        self.force_event = force if force is not None else threading.Event()
        self._registered = False
        self._held: tuple[Job, Outcome] | None = None  # see `run_once(hold=True)`
        self._held_error: QueuectlError | None = None

    def register(self) -> None:
        if not self._registered:
            self.storage.register_owner(self.owner)
            self.storage.begin_batching()
            self._registered = True

    def unregister(self) -> None:
        flush_lines()
        held = self._held
        try:
            self.record_held()
        except QueuectlError as e:  # it stays processing; the backend's note lets recovery complete it
            log.error("Job %s: result not recorded: %s", held[0].id if held else "?", e)
        if self._registered:
            self.storage.flush()
            self.storage.unregister_owner(self.owner)
            self._registered = False

    def run(self, parent_alive: Any = None) -> None:
        """Runs jobs until asked to stop (or until the parent process is gone)."""
        self.register()
        log.info("Worker %s started", self.name)
        try:
            while not self.stop_event.is_set() and not self.force_event.is_set():
                if parent_alive is not None and not parent_alive():
                    log.warning("Worker %s: manager is gone; stopping", self.name)
                    break
                if not self.run_once(hold=True):
                    self.storage.flush()
                    flush_lines()
                    self.storage.wait_for_work(self.owner, self.manager.config.poll_interval)
        finally:
            self.unregister()
            log.info("Worker %s stopped", self.name)  # written after the buffered job lines

    def run_once(self, hold: bool = False) -> bool:
        """Claims one due job, runs it and records the result; False when nothing was due (nor held).

        With `hold`, a successful result may wait until the next command has started: writing
        it while that command's shell starts, rather than before, made one worker about a third
        faster. The backend's record for recovery says that the job ended well meanwhile (see
        `Storage.hold_result`); `record_held` writes it, as the next `run_once` and `unregister` do.
        """
        self.register()
        job = self.manager.claim(self.owner, self._wait_for_start_slot)
        if job is None:
            # True when a held result was written: a job that waited for it may be due now
            return self.record_held()
        job_line("Job %s started on %s (attempt %d of %d): %s", job.id, self.name, job.attempts,
                 job.max_retries + 1, printable(job.command, " "))  # one line, no escapes to the terminal
        outcome = self.execute(job)  # writes a held result once the command has started
        try:
            self.record_held()  # the command could not start
        except QueuectlError as e:
            self._held_error = self._held_error or e
        failed, self._held_error = self._held_error, None
        if outcome is None:
            self.manager.release(job, "Interrupted by a forced stop")
            log.warning("Job %s interrupted by a forced stop; back to pending", job.id)
        elif hold and failed is None and outcome.ok and \
                self.storage.hold_result(self.owner, job, outcome.finished):
            self._held = (job, outcome)
        else:
            self._record(job, outcome)
        if failed is not None:  # writing the held result failed while this command ran
            raise failed
        return True

    def record_held(self) -> bool:
        """Writes the result `run_once(hold=True)` held; False if there was none."""
        if self._held is None:
            return False
        job, outcome = self._held
        self._held = None
        self._record(job, outcome)
        return True

    def _record(self, job: Job, outcome: Outcome) -> None:
        try:
            done = self.manager.finish(job, outcome)
        except ConflictError as e:
            log.error("Job %s: result not recorded: %s", job.id, e)
            return
        if outcome.ok:
            job_line("Job %s completed in %.2fs", job.id, outcome.finished - outcome.started)
        elif outcome.cancelled:
            log.warning("Job %s cancelled; moved to the DLQ", job.id)
        elif done.state is DEAD:
            log.warning("Job %s failed (%s); moved to the DLQ after %d attempt(s)", job.id,
                        printable(outcome.error or "", " "), done.attempts)
        else:
            log.warning("Job %s failed (%s); retry in %.0fs", job.id, printable(outcome.error or "", " "),
                        max(0.0, done.due_at - time.time()))

    def _wait_for_start_slot(self) -> None:
        """Honours `rate_limit`, shared by every worker of the store."""
        rate = self.manager.config.rate_limit
        while rate and not self.force_event.is_set():
            wait = self.storage.take_start_slot(rate)
            if wait <= 0:
                return
            self.record_held()  # not kept waiting for the slot
            flush_lines()
            time.sleep(min(wait, 1.0))

    def execute(self, job: Job) -> Outcome | None:
        """Runs the command; None if a forced stop cut it short."""
        timeout = job.timeout if job.timeout is not None else self.manager.config.job_timeout
        out_path, err_path = self.storage.output_paths(job.id, job.attempts)
        cap = self.manager.config.log_max_bytes
        started = time.time()
        sinks = [CappedFile(out_path, cap), CappedFile(err_path, cap)]
        if job.history and any(h.get("attempt") == job.attempts for h in job.history):
            for sink in sinks:  # this attempt number ran before and was given back: start clean
                sink.discard()
        marks = run_marks(self.owner, job.id, job.attempts)
        try:
            proc, pump = self._spawn(job.command, sinks, marks)
        except OSError as e:
            for sink in sinks:
                sink.close()
            return Outcome(exit_code=None, error=f"Cannot start command: {e.strerror or e}",
                           started=started, finished=time.time())
        # With a result held, its note (written next) carries the process group too: the
        # command runs unnoted for that long, where recovery finds it by its marks (Linux).
        held = self._held is not None
        self.storage.note_running(self.owner, proc.pid, defer=held)
        began = time.monotonic()  # the timeout counts the held result's writing too
        try:
            self.record_held()
        except QueuectlError as e:  # raised once this command is over and its result recorded
            self._held_error = e
        finally:
            if held:  # written unless the held result's note did
                self.storage.note_running(self.owner, proc.pid)
        try:
            ended = self._wait(proc, pump, timeout, job.id, began)
        finally:
            self.storage.note_running(self.owner, None)
            pump.drain()
            for sink in sinks:
                sink.close()
        finished = time.time()
        if ended == "forced":
            return None
        timed_out = ended == "timeout"
        if ended == "cancelled":
            error = "Cancelled"
        elif timed_out:
            error = f"Timed out after {timeout}s"
        elif proc.returncode == 0:
            error = None
        else:
            error = describe_exit(proc.returncode)
            line = tail_line(err_path)
            if line:
                error = f"{error}: {line}"
        return Outcome(exit_code=proc.returncode, error=error, timed_out=timed_out,
                       cancelled=ended == "cancelled", started=started, finished=finished)

    def _spawn(self, command: str, sinks: list[CappedFile], marks: dict[str, str]) -> tuple[Any, Pump]:
        """Starts the command, again if a signal to the whole process group (Ctrl+C on `start`)
        ended it before it ran anything (see `killed_before_exec`): that signal was for `start`."""
        for _ in range(SPAWN_TRIES):
            seen = group_signals[0]
            if SELECTABLE_PIPES:
                proc = spawn_shell(command, subprocess.PIPE, subprocess.PIPE, marks)
                pump = Pump({proc.stdout: sinks[0], proc.stderr: sinks[1]})  # type: ignore[dict-item]
            else:  # no select() on pipes: the command writes the files itself, uncapped
                proc = spawn_shell(command, sinks[0].fileobj(), sinks[1].fileobj(), marks)
                pump = Pump({})
            if group_signals[0] == seen or not killed_before_exec(proc.pid):
                return proc, pump
            log.info("A signal for the process group ended a command before it started; starting it again")
            proc.wait()
            pump.drain()
        return proc, pump

    def _wait(self, proc: subprocess.Popen, pump: Pump, timeout: float, job_id: str,
              began: float | None = None) -> str:
        """Waits for the command, copying its output: 'exited', or 'timeout', 'cancelled' or
        'forced' after ending its process group. `began`: the monotonic time it started."""
        deadline = (began if began is not None else time.monotonic()) + timeout if timeout else None
        pidfd = exit_fd(proc.pid)
        try:
            while True:
                step = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
                self.storage.tick()  # results and counts of earlier jobs do not wait for this one
                if _lines and time.time() - _lines_since[0] >= LINE_FLUSH_INTERVAL:
                    flush_lines()
                if pump.open or pidfd is not None:
                    pump.pump(step, pidfd)
                    if proc.poll() is not None:
                        return "exited"  # output still held open by background children is left
                else:
                    try:
                        proc.wait(timeout=step)
                        return "exited"
                    except subprocess.TimeoutExpired:
                        pass
                if self.force_event.is_set():
                    reason = "forced"
                elif deadline is not None and time.monotonic() >= deadline:
                    reason = "timeout"
                elif self.storage.cancel_requested(job_id):
                    reason = "cancelled"
                else:
                    continue
                kill_group(proc.pid, KILL_GRACE, proc)
                proc.wait()
                return reason
        finally:
            if pidfd is not None:
                os.close(pidfd)


_direct: list[logging.Handler] = []  # the handler `setup_logging` made
_stamp: list[Any] = [None, ""]  # (second, its local time formatted) for `job_line`
# Job lines not yet written (see `job_line`), and the time.time() of the first of them.
_lines: list[str] = []
_lines_since = [0.0]
# A backend's own thread (Redis's lease keeper) may log, and so flush, beside the worker's.
_lines_lock = threading.Lock()
# A job line waits at most this long, plus one of `Worker._wait`'s steps, before it is written.
LINE_FLUSH_INTERVAL = 0.05
# What LOG_FORMAT writes between the time and the message.
_LINE_LEVEL = f" - {__name__} - INFO - "


def job_line(msg: str, *args: Any) -> None:
    """An info line about a job, as `log.info` prints it.

    A worker prints two a job, and through logging a line cost 25 us in its loop (a record of
    twenty fields, filters, handler locks, the formatter's lookups): the two were a tenth of
    the worker's CPU a job. While the root logger has only the handler `setup_logging` made, the
    line is formatted as LOG_FORMAT would and kept, to be written with the others of the last
    LINE_FLUSH_INTERVAL in one call (`flush_lines`): before any other log line, while a command
    runs, before the worker waits for work and when it stops. A worker killed with SIGKILL loses
    the lines of its last moments, never their order. Otherwise the line goes through logging.
    """
    if not _direct or logging.root.handlers != _direct or not log.isEnabledFor(logging.INFO):
        log.info(msg, *args)
        return
    now = time.time()
    second = int(now)
    if _stamp[0] != second:  # many lines a second: the formatted local time is kept
        _stamp[:] = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
    if not _lines:
        _lines_since[0] = now
    _lines.append(f"{_stamp[1]},{MILLIS[int((now - second) * 1000)]}{_LINE_LEVEL}{msg % args}\n")


def flush_lines() -> None:
    """Writes the job lines `job_line` kept, in one call."""
    if not _lines:
        return
    with _lines_lock:  # written under it too: two flushes never swap their lines
        # Only the worker's thread adds lines: one added meanwhile stays for the next flush.
        count = len(_lines)
        text = "".join(_lines[:count])
        del _lines[:count]
        try:
            stream = _direct[0].stream  # type: ignore[attr-defined]
            stream.write(text)
            stream.flush()
        except (OSError, ValueError, IndexError):  # a closed or broken stderr: logging would drop them too
            pass


def _lines_first(_record: logging.LogRecord) -> bool:
    """A filter of the direct handler: the kept job lines are written before any other line."""
    flush_lines()
    return True


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT,
                        stream=sys.stderr, force=True)
    # LOG_FORMAT shows none of these: the logging HOWTO's "Optimization" switches, a fifth off
    # each line that still goes through logging.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup per line
    _direct[:] = logging.root.handlers
    for handler in _direct:
        handler.addFilter(_lines_first)


# SIGINT and SIGTERM this worker process received: one that arrives while a command is being
# started may have ended it too (see `Worker._spawn`).
group_signals = [0]


def install_worker_signals(stop: Any) -> None:
    """Ctrl+C reaches the whole process group: the parent decides, so a worker only counts it.
    SIGTERM asks for a graceful stop. Counted rather than ignored, for `Worker._spawn`."""
    def on_interrupt(_signum: int, _frame: Any) -> None:
        group_signals[0] += 1

    def on_term(_signum: int, _frame: Any) -> None:
        group_signals[0] += 1
        stop.set()

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_term)


def _worker_main(settings: WorkerSettings, stop: Any, force: Any) -> None:
    """Entry point of a worker process; leaves shutdown to the parent."""
    install_worker_signals(stop)
    # for `ps`, and so that a command not yet exec'd is told apart (see `killed_before_exec`)
    name_this_process("queuectl-worker")
    run_as_batch()
    setup_logging(settings.log_level)
    storage = get_storage(settings.storage_path)
    parent = multiprocessing.parent_process()
    worker = Worker(QueueManager(storage, settings.storage_path), settings.name, stop, force)
    try:
        worker.run(parent_alive=_parent_check(parent))
    except QueuectlError as e:
        log.error("Worker %s: %s", settings.name, e)
        sys.exit(1)
    finally:
        storage.close()


def _parent_check(parent: Any) -> Any:
    """What tells a worker that its `start` process is gone, asked before every job.

    multiprocessing's is_alive polls a sentinel through a new selector each time; on POSIX a
    process whose parent died has a new parent, which getppid tells for the cost of a syscall.
    """
    if parent is None:
        return None
    if os.name == "posix":
        return lambda: os.getppid() == parent.pid
    return parent.is_alive


class WorkerPool:
    """The `start` process: spawns workers, restarts dead ones, recovers orphans, stops cleanly."""

    def __init__(self, manager: QueueManager, count: int, duration: float | None = None,
                 launched_at: float | None = None):
        self.manager = manager
        # A `stop` sent after this time is for us, even one sent while we were still starting.
        self.launched_at = launched_at
        self.storage = manager.storage
        self.count = count
        self.duration = duration
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_event = SharedFlag(self.ctx)
        self.force_event = SharedFlag(self.ctx)
        self.signals = 0
        self.procs: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.id = new_owner_id("manager")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Supervises the workers until they stop. `on_ready` runs once the housekeeping is
        done, before any worker starts."""
        begin = time.time()
        # The record first: a store this process cannot write fails here, before the
        # housekeeping rewrites anything a file's owner may rewrite in a read-only folder.
        self.storage.register_manager(ManagerInfo(
            id=self.id, pid=os.getpid(), workers=self.count, started_at=begin,
            host=host_id(), storage=self.storage.display))
        try:
            self.manager.prepare_start()
            if on_ready is not None:
                on_ready()
            for i in range(1, self.count + 1):
                self._spawn(i)
            self._supervise(begin)
        finally:
            self.stop_event.set()
            for proc in self.procs.values():
                proc.join()
            if self.procs:  # what its workers left; a housekeeping that failed left no worker
                self.manager.recover()
            self.storage.unregister_manager(self.id)
        log.info("All workers stopped")
        return 0

    def _spawn(self, index: int) -> None:
        settings = WorkerSettings(self.manager.storage_path, f"worker-{index}",
                                  self.manager.config.log_level)
        proc = self.ctx.Process(target=_worker_main, args=(settings, self.stop_event, self.force_event),
                                name=f"queuectl-worker-{index}", daemon=False)
        proc.start()
        self.procs[index] = proc
        self.started_at[index] = time.monotonic()

    def _supervise(self, begin: float) -> None:
        last_recover = last_trim = time.monotonic()
        respawn_at: dict[int, float] = {}
        while True:
            if self.signals >= 2 and not self.force_event.is_set():
                log.warning("Second signal: ending running jobs and returning them to pending")
                self.force_event.set()
            if not self.stop_event.is_set() and self._should_stop(begin):
                self.stop_event.set()
            stopping = self.stop_event.is_set()
            for index, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                if stopping:
                    continue
                if index not in respawn_at:
                    log.warning("Worker worker-%d exited unexpectedly (code %s); restarting",
                                index, proc.exitcode)
                    young = time.monotonic() - self.started_at[index] < RESPAWN_BACKOFF
                    respawn_at[index] = time.monotonic() + (RESPAWN_BACKOFF if young else 0)
                if time.monotonic() >= respawn_at[index]:
                    del respawn_at[index]
                    self._spawn(index)
            if stopping and not any(p.is_alive() for p in self.procs.values()):
                return
            if time.monotonic() - last_recover >= RECOVER_INTERVAL:
                last_recover = time.monotonic()
                self._recover()
            if time.monotonic() - last_trim >= TRIM_INTERVAL:
                last_trim = time.monotonic()
                self._trim()
            time.sleep(SUPERVISE_INTERVAL)

    def _should_stop(self, begin: float) -> bool:
        if self.signals >= 1:
            log.info("Signal received: finishing running jobs, then stopping")
            return True
        if self.duration is not None and time.time() - begin >= self.duration:
            log.info("Run time of %ss is over: finishing running jobs, then stopping", _fmt(self.duration))
            return True
        mode = self.storage.stop_requested(min(begin, self.launched_at or begin))
        if mode == "force":
            log.warning("Forced stop requested: ending running jobs and returning them to pending")
            self.force_event.set()
            return True
        if mode:
            log.info("Stop requested: finishing running jobs, then stopping")
            return True
        return False

    def _trim(self) -> None:
        try:
            removed = self.manager.trim_completed()
        except QueuectlError as e:
            log.error("Trimming completed jobs failed: %s", e)
            return
        if removed:
            log.info("Removed %d old completed job(s) (keep_completed)", removed)

    def _recover(self) -> None:
        try:
            self.manager.recover()
        except QueuectlError as e:
            log.error("Recovery failed: %s", e)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
