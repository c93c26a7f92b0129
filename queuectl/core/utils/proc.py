"""Process helpers: run a shell command in its own group, and end that whole group.

POSIX gets a new session per job so a timeout or a forced stop can kill the command's children
too; Windows gets a new process group and best-effort termination.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import IO

POSIX = os.name == "posix"


def spawn_shell(command: str, stdout: IO[bytes] | int, stderr: IO[bytes] | int) -> subprocess.Popen:
    """Starts `command` through the platform shell, detached from our terminal's signals."""
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": stdout, "stderr": stderr, "shell": True}
    if POSIX:
        kwargs["start_new_session"] = True  # own group: Ctrl+C on `start` does not hit jobs
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    return subprocess.Popen(command, **kwargs)


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
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


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


def exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux pidfd), so waiting needs no
    polling; None where the platform has none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError:
        return None
