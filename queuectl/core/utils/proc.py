"""Process helpers: run a shell command in its own group, and end that whole group.

POSIX gets a new session per job so a timeout or a forced stop can kill the command's children
too; Windows gets a new process group and best-effort termination.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import IO, Iterator

from .log import get_logger

log = get_logger(__name__)
POSIX = os.name == "posix"


# Dispositions a job starts with. SIGPIPE and SIGXFSZ are what Popen restores too (Python
# ignores them); SIGINT is ignored by workers, which leave Ctrl+C to their parent, and an
# ignored signal would otherwise stay ignored across exec.
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ", "SIGINT")
                         if hasattr(signal, name))
# posix_spawn with a new session: some 30 us less than Popen a job in a worker (see
# `ShellProcess`). Cleared when this libc cannot start a session that way; tests clear it to
# run the fallback.
POSIX_SPAWN = POSIX and hasattr(os, "posix_spawn")
_spawn_state: dict[str, int] = {}
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class _UsePopen(Exception):
    """This one command is for Popen (see `_posix_spawn_shell`)."""


def spawn_shell(command: str, stdout: IO[bytes] | int, stderr: IO[bytes] | int,
                extra_env: dict[str, str] | None = None) -> subprocess.Popen | ShellProcess:
    """Starts `command` through the platform shell, detached from our terminal's signals.

    `stdout`/`stderr` are subprocess.PIPE or open files; `extra_env` is added to this process's
    environment for the command. What comes back has what the worker uses of a Popen: pid,
    poll(), wait(), returncode, and the read ends as stdout/stderr.
    """
    global POSIX_SPAWN
    if POSIX_SPAWN:
        try:
            return _posix_spawn_shell(command, stdout, stderr, extra_env)
        except NotImplementedError:  # no POSIX_SPAWN_SETSID in this libc
            POSIX_SPAWN = False
        except _UsePopen:
            pass
        except PermissionError:
            if _command_policy[0] is None:
                raise
            leave_batch()  # a system that will not let the command leave batch: the worker leaves
            return _posix_spawn_shell(command, stdout, stderr, extra_env)
    if _command_policy[0] is not None:  # Popen cannot set it: the command would inherit batch
        leave_batch()
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": stdout, "stderr": stderr, "shell": True}
    if extra_env:
        kwargs["env"] = {**os.environ, **extra_env}
    if POSIX:
        kwargs["start_new_session"] = True  # own group: Ctrl+C on `start` does not hit jobs
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    return subprocess.Popen(command, **kwargs)


class _ReadEnd:
    """The parent's end of a pipe, with the two methods `Pump` uses of a file object."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShellProcess:
    """A command started with posix_spawn, in a new session, as Popen(shell=True) would start it.

    Popen's Python-level work (file objects around each pipe, its /dev/null, its locks, the
    environment converted on every call) was the largest part of a worker's own cost of a job;
    this keeps one /dev/null per process and passes the environment as CPython holds it.
    Python's own descriptors are not inherited (PEP 446), and `_dev_null` marks the ones this
    process was started with, so the child gets what Popen's close_fds would leave it: 0, 1, 2.
    """

    def __init__(self, pid: int, stdout: _ReadEnd | None, stderr: _ReadEnd | None):
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere; Popen reports 0 then too
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                try:
                    _pid, status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    self.returncode = 0
                else:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("sh", timeout)
            time.sleep(min(left, 0.005))
        return self.returncode  # type: ignore[return-value]


def _dev_null() -> int:
    """/dev/null for every job's stdin, opened once per process; the process's inherited
    descriptors are made non-inheritable then, as Popen's close_fds would leave them behind."""
    if "null" not in _spawn_state:
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            fds = list(range(3, 256))
        for fd in fds:
            if fd > 2:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
        _spawn_state["null"] = os.open(os.devnull, os.O_RDONLY)
    return _spawn_state["null"]


if hasattr(os, "register_at_fork"):  # a forked child looks again, rather than a getpid a job
    os.register_at_fork(after_in_child=lambda: _spawn_state.clear())


def _environment() -> object:
    """The environment as posix_spawn wants it. CPython keeps it as a dict of bytes behind
    os.environ (changes included); converting the mapping instead cost 30 us a job."""
    data = getattr(os.environb, "_data", None)  # type: ignore[attr-defined]
    return data if isinstance(data, dict) else os.environb  # type: ignore[attr-defined]


def _posix_spawn_shell(command: str, stdout: IO[bytes] | int, stderr: IO[bytes] | int,
                       extra_env: dict[str, str] | None = None) -> ShellProcess:
    null = _dev_null()
    env = _environment()
    if extra_env:  # a copy of a few dozen entries: under a microsecond
        env = {**env, **{k.encode(_FS_ENCODING, _FS_ERRORS): v.encode(_FS_ENCODING, _FS_ERRORS)  # type: ignore[dict-item]
                         for k, v in extra_env.items()}}  # what os.fsencode does, without its checks
    opened: list[int] = []
    ends: list[_ReadEnd | None] = []
    targets: list[int] = []
    try:
        for stream in (stdout, stderr):
            if stream == subprocess.PIPE:
                r, w = os.pipe()
                opened += [r, w]
                ends.append(_ReadEnd(r))
                targets.append(w)
            else:
                ends.append(None)
                targets.append(stream.fileno())  # type: ignore[union-attr]
        if min(targets) <= 2 or null <= 2:  # a closed std stream got reused: Popen sorts that out
            raise _UsePopen
        argv, policy = ["/bin/sh", "-c", command], _command_policy[0]
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, targets[0], 1),
                   (os.POSIX_SPAWN_DUP2, targets[1], 2)]
        if policy is None:  # Python 3.11 takes scheduler=None for a malformed value
            pid = os.posix_spawn("/bin/sh", argv, env, setsid=True,  # type: ignore[arg-type]
                                 setsigdef=_DEFAULT_SIGNALS, file_actions=actions)
        else:
            pid = os.posix_spawn("/bin/sh", argv, env, setsid=True,  # type: ignore[arg-type]
                                 setsigdef=_DEFAULT_SIGNALS, scheduler=policy, file_actions=actions)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    for fd in opened[1::2]:
        os.close(fd)  # the write ends are the child's now
    return ShellProcess(pid, ends[0], ends[1])


# The policy a command is started with while its worker runs as a batch task (see
# `run_as_batch`): set in the child before its exec, so no command runs an instruction as batch.
_command_policy: list[tuple[int, object] | None] = [None]


def run_as_batch() -> bool:
    """Moves the calling process, a worker, to the SCHED_BATCH policy; the commands it starts
    stay on the normal one. True if it moved.

    A worker runs some Python between its commands and has nothing to answer quickly, which is
    what SCHED_BATCH is for. What it buys is where a new command runs: Linux places a new
    process by load, often on the CPU of the other worker, and a normal process preempts that
    worker while the spawning one sits blocked until the exec, its CPU idle. A batch child
    does not preempt: it waits in the queue, and the idle CPU takes it. With 2 workers on 2
    cores the CPUs were idle about 6% of a drain instead of 9%, and 16 of 21 alternated drains
    ran faster. Only from the normal policy (a user's `chrt` or realtime choice is kept), and
    only where posix_spawn can hand the normal policy back to each command (Linux).
    """
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not POSIX_SPAWN or _command_policy[0] is not None:
        return False
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False
        normal = (os.SCHED_OTHER, os.sched_param(0))
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    _command_policy[0] = normal
    return True


def leave_batch() -> None:
    """Back to the normal policy (see `run_as_batch`), for commands started without posix_spawn."""
    if _command_policy[0] is None:
        return
    try:
        os.sched_setscheduler(0, *_command_policy[0])  # type: ignore[arg-type]
    except OSError as e:
        log.warning("Cannot leave the batch scheduling policy: %s", e)
    _command_policy[0] = None


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for a reaper do not count)."""
    if not POSIX:
        return pid_alive(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    """Linux: looks past zombies, which an init that does not reap would keep forever."""
    try:
        return any(int(fields[2]) == pgid and fields[0] != b"Z" for _pid, fields in _process_stats())
    except OSError:
        return True  # no /proc: trust killpg


def _process_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, the fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...)
    of every process that is still there; OSError where there is no /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), _read_stat(entry)[1]
            except OSError:
                continue


def _read_stat(pid: str) -> tuple[bytes, list[bytes]]:
    """A process's name, and the fields of /proc/PID/stat after it (PID may be 'thread-self')."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    head, _, rest = stat.rpartition(b")")
    return head.partition(b"(")[2], rest.split()


def signal_group(pgid: int, sig: int) -> None:
    """Sends `sig` to the whole group; a group that is already gone is not an error."""
    try:
        if POSIX:
            os.killpg(pgid, sig)
        else:
            os.kill(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def kill_group(pgid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """TERM the group, then KILL it after `grace` seconds if anything is left."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not group_alive(pgid):
            return
        time.sleep(0.02)
    if POSIX:
        signal_group(pgid, signal.SIGKILL)


# A process's start time read from /proc against a note's time: ticks of 10 ms, and a clock
# that may have been stepped since; a reused pid takes a full turn of the pid space first.
NOTED_SLACK = 1.0


def noted_group_is_theirs(pgid: int, owner: str, noted_at: float | None) -> bool:
    """Whether process group `pgid`, which dead worker `owner` noted as its command's, may still
    be that command: a live member carries the worker's mark (see `run_marks`), or started
    before the note was last written (when the noted command still held that pid, alive or
    waiting to be reaped). Otherwise the group is gone, or its number is another process's by
    now, and signalling it would end a stranger. True where there is no /proc to tell."""
    needle = f"QUEUECTL_WORKER={owner}".encode()
    try:
        stats = list(_process_stats())
        hz = os.sysconf("SC_CLK_TCK")
        since_boot = time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))
    except (OSError, ValueError, AttributeError):
        return True
    now = time.time()
    for pid, fields in stats:
        try:
            if int(fields[2]) != pgid or fields[0] == b"Z":
                continue
            started = now - (since_boot - int(fields[19]) / hz)
        except (IndexError, ValueError):
            continue
        if noted_at is not None and started <= noted_at + NOTED_SLACK:
            return True
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    return True
        except OSError:
            continue
    return False


def end_orphan_group(pgid: int, owner: str, noted_at: float | None, grace: float) -> None:
    """Ends the command a dead worker left running, by the process group its note names, unless
    that group is gone or is someone else's by now (see `noted_group_is_theirs`)."""
    if not noted_group_is_theirs(pgid, owner, noted_at):
        log.info("Process group %s of dead worker %s is gone or no longer its own; left alone", pgid, owner)
        return
    log.warning("Ending process group %s left running by dead worker %s", pgid, owner)
    kill_group(pgid, grace)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if not POSIX:
        return True  # no cheap check; callers rely on locks instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_marks(owner: str, job_id: str, attempt: int) -> dict[str, str]:
    """What a job's command finds in its environment: which job and attempt it is, and which
    worker runs it. Recovery also finds by them a command whose worker died before noting it."""
    return {"QUEUECTL_JOB_ID": job_id, "QUEUECTL_ATTEMPT": str(attempt), "QUEUECTL_WORKER": owner}


def marked_session(marks: dict[str, str]) -> int | None:
    """The live session leader whose environment holds all of `marks` (see `run_marks`), the
    earliest started if the command started others in sessions of their own; Linux (/proc),
    None elsewhere. It is the command of that attempt: it leads its own session (see
    `spawn_shell`) and keeps its pid across the exec of its last command, so the pid is also the
    process group to end, as a noted one would be.
    """
    needles = {f"{k}={v}".encode() for k, v in marks.items()}
    best: tuple[int, int] | None = None
    try:
        stats = list(_process_stats())
    except OSError:
        return None
    for pid, fields in stats:
        if fields[3] != str(pid).encode() or fields[0] == b"Z":  # session (stat field 6), state
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if not needles <= set(f.read().split(b"\0")):
                    continue
            started = int(fields[19])  # stat field 22, in clock ticks since boot
        except (OSError, IndexError, ValueError):
            continue
        if best is None or started < best[0]:
            best = (started, pid)
    return best[1] if best else None


def describe_exit(returncode: int) -> str:
    """'Exit code 3' or 'Killed by signal 9 (SIGKILL)' for a Popen returncode."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"Killed by signal {-returncode} ({name})"
    return f"Exit code {returncode}"


def spawn_detached(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> int:
    """Starts a process that outlives us, in its own session, its output appended to a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": fd, "stderr": fd, "close_fds": True,
                        "env": {**os.environ, **(env or {})}}
        if POSIX:
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
                                       | subprocess.DETACHED_PROCESS)  # type: ignore[attr-defined]
        return subprocess.Popen(argv, **kwargs).pid
    finally:
        os.close(fd)


def killed_before_exec(pid: int, within: float = 5.0) -> bool:
    """Whether the child `pid` (not reaped yet) was ended by a signal before it became the shell,
    and so ran nothing of its command.

    posix_spawn (and Popen) move the child into its own session only after resetting its signal
    handlers, with every signal blocked: a signal sent to the worker's process group in between
    (Ctrl+C on `start`) stays pending and, once unblocked, ends the child with the default
    action. Until an exec renames it, the child bears the name of the thread that started it
    (a worker names itself, see `name_this_process`), dead or alive. Linux only; False
    elsewhere, and when neither is known within `within` seconds.
    """
    if not hasattr(os, "waitid"):
        return False
    try:
        mine = _read_stat("thread-self")[0]
    except OSError:
        return False
    deadline = time.monotonic() + within
    while True:
        try:
            ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            name = _read_stat(str(pid))[0]
        except OSError:  # reaped elsewhere, or no /proc
            return False
        if ended is not None:
            return ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED) and name == mine
        if name != mine or time.monotonic() >= deadline:
            return False  # it became the shell: its command runs
        time.sleep(0.001)


def name_this_process(name: str) -> None:
    """Sets the name `ps` and /proc show for the calling thread (Linux; 15 bytes kept)."""
    try:
        with open("/proc/thread-self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


_PIDFD_OPEN = getattr(os, "pidfd_open", None)  # Linux 5.3 and later


def exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux pidfd), so waiting needs no
    polling; None where the platform has none."""
    if _PIDFD_OPEN is None:
        return None
    try:
        return _PIDFD_OPEN(pid)
    except OSError:
        return None
