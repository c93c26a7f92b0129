"""Waking idle workers without polling: a named pipe that enqueues write a byte into.

Every idle worker waits on the same FIFO; one byte wakes one worker, so a single job does not
stampede the pool. Bytes left over when every worker is busy only cause a spare look for work.
Where named pipes do not exist (Windows) every call here degrades to plain polling.
"""
from __future__ import annotations

import errno
import os
import select
import time

# A pipe holds 64 KiB; a few bytes per batch are enough to wake every idle worker.
MAX_WAKE_BYTES = 64


def open_listener(path: str) -> int | None:
    """The FIFO opened for waiting (created if needed); None where FIFOs are unavailable."""
    if not hasattr(os, "mkfifo"):
        return None
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        # read-write, so the pipe always has a writer and select() does not spin on EOF
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None


def wait(fd: int, timeout: float) -> bool:
    """Blocks up to `timeout` seconds for a wake-up byte; True if one was taken."""
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    except (OSError, ValueError):
        time.sleep(timeout)
        return False
    if not ready:
        return False
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False  # another worker took it first


def notify(path: str, count: int = 1) -> None:
    """Writes up to `count` wake-up bytes; silent when nobody listens or the pipe is full."""
    if not hasattr(os, "mkfifo"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no FIFO yet (no worker ever waited) or no reader (ENXIO)
    try:
        os.write(fd, b"\x01" * max(1, min(count, MAX_WAKE_BYTES)))
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EPIPE):
            raise
    finally:
        os.close(fd)
