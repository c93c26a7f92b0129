"""A helper process: one function run in a forked child beside its caller, on the second core.

For work that is mostly system calls and GIL-bound Python at once (a bulk enqueue's file
creation), where a thread would hand the GIL back and forth at every call. POSIX only, and not
from a process with threads: a fork copies only the calling thread, and a lock another thread
held stays locked in the child. Where it cannot start, `start_helper` returns None and the
caller does the work itself.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

# Cleared by tests to run the callers' one-process path.
FORK = hasattr(os, "fork") and hasattr(os, "waitpid")


class Helper:
    """A started helper: `join` waits for it and raises what it raised, as an OSError."""

    def __init__(self, pid: int, fd: int):
        self._pid: int | None = pid
        self._fd: int | None = fd

    def join(self) -> None:
        """Waits for the helper to end; OSError if it failed (its errno and message) or died."""
        assert self._pid is not None and self._fd is not None
        chunks = []
        while chunk := os.read(self._fd, 4096):
            chunks.append(chunk)
        self._close()
        status = _wait(self._pid)
        self._pid = None  # reaped: its pid may belong to another process from now on
        report = b"".join(chunks).decode("utf-8", "replace")
        if report:
            code, _, message = report.partition(" ")
            raise OSError(int(code) if code.isdigit() else 0, message or "a helper process failed")
        if status != 0:
            raise OSError(0, f"a helper process died ({_describe(status)})")

    def cancel(self) -> None:
        """Ends the helper now and waits for it, unless `join` already has (the caller is
        giving up on the work: the helper must stop before its files are removed)."""
        self._close()
        if self._pid is None:
            return
        import signal
        try:
            os.kill(self._pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except ProcessLookupError:
            pass
        _wait(self._pid)
        self._pid = None

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def start_helper(work: Callable[[], None]) -> Helper | None:
    """Runs `work()` in a forked child; None where that cannot be done (see the module)."""
    threading = sys.modules.get("threading")  # not imported: no Python thread was ever started
    if not FORK or (threading is not None and threading.active_count() > 1):
        return None
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # pragma: no cover (the child; its effects are what the tests check)
        code = 0
        try:
            os.close(read_end)
            work()
        except BaseException as e:  # Ctrl+C included: the caller sees it and cancels
            code = 1
            errno = e.errno if isinstance(e, OSError) and e.errno else 0
            text = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            try:
                os.write(write_end, f"{errno} {text}".encode("utf-8", "replace")[:4096])
            except BaseException:
                pass
        finally:
            os._exit(code)  # no atexit handlers, no flushing of the caller's buffers, no locks let go
    os.close(write_end)
    return Helper(pid, read_end)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _describe(status: int) -> str:
    if hasattr(os, "WIFSIGNALED") and os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status) if hasattr(os, 'waitstatus_to_exitcode') else status}"
