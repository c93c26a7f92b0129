"""A helper process: one function run in a forked child beside its caller, on the second core.

For work that is mostly system calls and GIL-bound Python at once (a bulk enqueue's file
creation), where a thread would hand the GIL back and forth at every call. POSIX only, and not
from a process with threads: a fork copies only the calling thread, and a lock another thread
held stays locked in the child. Where it cannot start, `start_helper` returns None and the
caller does the work itself.

The child reports on a pipe: "ok" as its very last act, or the error it raised. Anything else
(nothing at all) means it died, whatever `waitpid` says: where SIGCHLD is ignored, children are
reaped by the kernel and `waitpid` cannot tell a killed child from a clean exit.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

# Cleared by tests to run the callers' one-process path.
FORK = hasattr(os, "fork") and hasattr(os, "waitpid")
_OK = b"ok"
# Held off while the child is forked, so neither side is interrupted half set up; the child
# then takes the default action for each (it dies, and its caller reports that).
_SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGHUP")


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
        pid, self._pid = self._pid, None  # about to be reaped: its pid may be reused after
        status = _wait(pid)
        report = b"".join(chunks)
        if report == _OK:
            return
        if report:
            code, _, message = report.decode("utf-8", "replace").partition(" ")
            raise OSError(int(code) if code.isdigit() else 0, message or "a helper process failed")
        raise OSError(0, f"a helper process died ({_describe(status)})")

    def cancel(self) -> None:
        """Ends the helper now and waits for it, unless `join` already has (the caller is
        giving up on the work: the helper must stop before its files are removed)."""
        self._close()
        if self._pid is None:
            return
        pid, self._pid = self._pid, None
        import signal
        try:
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except ProcessLookupError:
            pass
        _wait(pid)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def start_helper(work: Callable[[], None]) -> Helper | None:
    """Runs `work()` in a forked child; None where that cannot be done (see the module)."""
    if not FORK or _has_threads():
        return None
    import signal  # here, not at the top: every CLI call imports this module, few fork

    signals = {getattr(signal, name) for name in _SIGNAL_NAMES if hasattr(signal, name)}
    blocked = hasattr(signal, "pthread_sigmask")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals) if blocked else None
    helper = None
    try:
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:  # pragma: no cover (the child; its effects are what the tests check)
            _child(work, read_end, write_end, signals, old_mask)
        os.close(write_end)
        helper = Helper(pid, read_end)
    finally:
        if blocked:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a pending Ctrl+C lands here
            except BaseException:
                if helper is not None:
                    helper.cancel()
                raise
    return helper


def _child(work: Callable[[], None], read_end: int, write_end: int, signals: set, old_mask: object) -> None:
    """The helper's whole life: it never returns into its caller's code."""
    import signal

    code = 1
    try:
        for sig in signals:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # what the caller ignores, it ignores
                signal.signal(sig, signal.SIG_DFL)
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read_end)
        # Not the caller's terminal or pipes: a helper that outlives a killed caller must not
        # keep a reader of its output waiting.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        import gc
        gc.disable()  # a collection would touch every object the fork shares with the caller
        try:
            work()
            report = _OK
        except BaseException as e:
            errno = e.errno if isinstance(e, OSError) and e.errno else 0
            text = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            report = f"{errno} {text}".encode("utf-8", "replace")[:4096]
        os.write(write_end, report)
        code = 0 if report == _OK else 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the caller's buffers, no locks let go


def _has_threads() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) > 1  # every thread, those of C code included
    except OSError:
        threading = sys.modules.get("threading")  # not imported: no Python thread was started
        return threading is not None and threading.active_count() > 1


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:  # reaped already (SIGCHLD ignored): the report decides
            return -1


def _describe(status: int) -> str:
    if status < 0:
        return "its exit status is unknown"
    if hasattr(os, "WIFSIGNALED") and os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
