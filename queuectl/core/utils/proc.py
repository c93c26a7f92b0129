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
    if not POSIX:
        return pid_alive(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
