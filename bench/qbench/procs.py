"""Background processes that never outlive the benchmark, and reading process trees from /proc."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

# Every process started in the background, until it is reaped; run.py ends the rest on exit.
_LIVE: set[subprocess.Popen] = set()


def spawn(args: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Starts a process in its own session (so its whole group can be ended), output to a log."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(args), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _LIVE.add(proc)
    return proc


def terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Ends a process and its group: TERM, TERM again (queuectl's forced stop), then KILL."""
    try:
        for wait in (0.5, grace):
            if proc.poll() is not None:
                break
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        _signal_group(proc.pid, signal.SIGKILL)  # whatever is left of the group
        if proc.poll() is None:
            proc.wait(timeout=grace)
    finally:
        _LIVE.discard(proc)


def terminate_all() -> None:
    """Ends every background process still running (the safety net of run.py)."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            terminate(proc, grace=2.0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def background(args: Sequence[str], env: dict[str, str], log_path: Path,
               stop: Optional[Callable[[subprocess.Popen], None]] = None) -> Iterator[subprocess.Popen]:
    """A process for the `with` block: `stop(proc)` asks it to end, then it is made to end."""
    proc = spawn(args, env, log_path)
    try:
        yield proc
    finally:
        try:
            if stop is not None and proc.poll() is None:
                stop(proc)
        finally:
            terminate(proc)


def _ppid_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def children(pid: int) -> list[int]:
    return sorted(_ppid_map().get(pid, []))


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, at any depth."""
    kids = _ppid_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def status_kb(pid: int, field: str) -> int:
    """A `Vm*` line of /proc/<pid>/status in kB; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def queuectl_workers(start_pid: int) -> list[int]:
    """The worker processes of a `queuectl start` (spawned by multiprocessing, not its tracker)."""
    return [pid for pid in children(start_pid)
            if "multiprocessing" in (cmd := cmdline(pid)) and "resource_tracker" not in cmd]


def wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the process exited within `timeout` seconds."""
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def sleep_until(deadline: float) -> None:
    """Sleeps until a time.monotonic() deadline."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
