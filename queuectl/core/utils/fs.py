"""Small file-system primitives: atomic writes and OS locks, with the POSIX parts kept here.

Everything that differs between POSIX and Windows sits behind a function in this module, with a
fallback that is correct if less efficient.
"""
from __future__ import annotations

import errno
import os
import sys
import uuid
from typing import IO

from .faults import fault

DIR_MODE = 0o700
FILE_MODE = 0o600
# Windows opens files in text mode without it. Looked up once: getattr of a name that is
# missing raises and catches an AttributeError, and a worker opens files several times a job.
O_BINARY: int = getattr(os, "O_BINARY", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY
# A lock file's note is rewritten in place at this fixed size (padded), never truncated.
NOTE_SIZE = 1024
# A note is read up to this many 64 KiB chunks (a sane bound for a corrupt, huge lock file).
MAX_NOTE_CHUNKS = 64

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


def sync_filesystem(path: str, files: list[str] | None = None) -> None:
    """Makes everything written to `path`'s filesystem durable with one call (Linux syncfs),
    so a batch costs one journal commit; elsewhere fsyncs `files` one by one (or os.sync)."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            synced = syncfs(fd) == 0
        finally:
            os.close(fd)
        if synced:
            fault("sync.after")
            return
    if files is not None:
        for name in files:
            if os.path.isdir(name):
                fsync_dir(name)
                continue
            # Windows flushes a file only through a handle that may write.
            fd = os.open(name, os.O_RDWR | O_BINARY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    elif hasattr(os, "sync"):
        os.sync()
    fault("sync.after")


_SYNCFS: list = []


def _syncfs():  # type: ignore[no-untyped-def]
    if not _SYNCFS:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                fn = ctypes.CDLL(None, use_errno=True).syncfs
                fn.argtypes = [ctypes.c_int]
            except (OSError, AttributeError):
                fn = None
        _SYNCFS.append(fn)
    return _SYNCFS[0]


def new_private_file(folder: str, stem: str, suffix: str) -> str:
    """Creates an empty file (0600) named `stem + suffix` in `folder`, or `stem-2 + suffix`,
    `stem-3`... if taken, and returns its path: two callers with the same stem (a timestamp of
    the same second) each get a file of their own."""
    n = 1
    while True:
        path = os.path.join(folder, f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            os.close(os.open(path, _NEW_FILE, FILE_MODE))
            return path
        except FileExistsError:
            n += 1


def widen_pipe(fd: int, size: int) -> None:
    """Asks for a pipe buffer of `size` bytes (Linux); elsewhere, or if refused, the pipe keeps
    its size, which works with less room between its two ends."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is not None:
        try:
            fcntl.fcntl(fd, setter, size)
        except OSError:
            pass


def write_private(path: str, data: bytes, durable: bool = False) -> None:
    """Writes a new file (O_EXCL, 0600); without fsync unless `durable` (the caller syncs a
    whole batch at once)."""
    fd = os.open(path, _NEW_FILE, FILE_MODE)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    fault("stage.written")


# POSIX renames a file another descriptor has open (and locked); Windows refuses a file open
# without delete sharing, which os.open never asks for.
RENAME_OPEN_FILES = os.name == "posix"


def write_locked(path: str, data: bytes, durable: bool = False) -> int:
    """Creates `path` (O_EXCL, 0600) holding `data`, with an exclusive lock on it; returns the
    descriptor, which holds the lock until it is closed: whoever probes the lock (see
    `probe_lock`) learns whether its writer still lives."""
    fd = os.open(path, _NEW_FILE, FILE_MODE)
    try:
        _try_lock(fd, exclusive=True)  # a new file: nobody else can hold it
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    fault("stage.written")
    return fd


def fsync_dir(path: str) -> None:
    """Makes a rename or unlink in `path` durable; a no-op where directories cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.sync()  # a file system (some network and FUSE ones) that cannot sync a folder alone
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, durable: bool = True, sync_dir: bool = True,
               temp_dir: str | None = None) -> None:
    """Atomically replaces `path` with `data`: unique temp file, fsync, os.replace, fsync dir.

    With durable=False the replacement is still atomic (never a partial file) but may be lost
    to a power cut; with sync_dir=False the caller makes the directory durable itself.
    `temp_dir` (on the same file system) holds the temp file instead of `path`'s folder: for a
    folder too big to search for what a killed writer left.
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(temp_dir or folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, FILE_MODE)
    try:
        try:
            _write_all(fd, data)
            fault("write.before_fsync")
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        fault("write.before_replace")
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fault("write.after_replace")
    if durable and sync_dir:
        fsync_dir(folder)


HAS_PWRITE = hasattr(os, "pwrite")


def _write_at_start(fd: int, data: bytes) -> None:
    """Overwrites the file from its first byte: pwrite where there is one (one call, not two: a
    worker rewrites its note three or four times a job)."""
    if not HAS_PWRITE:  # Windows
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, data)
        return
    if os.pwrite(fd, data, 0) == len(data):  # a note of a page or so: one call writes it
        return
    view, offset = memoryview(data), 0
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_private_dir(path: str) -> None:
    """Creates `path` (and parents) with mode 0700; leaves an existing one alone."""
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)


class HeldLock:
    """An exclusive OS lock held for a process's lifetime; the kernel drops it when we die.

    This is how liveness is told apart from a stale record: whoever can take the lock knows the
    holder is gone. The file stays open so a small note (the running job's process group) can be
    written into it for whoever cleans up after a crash.
    """

    def __init__(self, path: str):
        self.path = path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | O_BINARY, FILE_MODE)
            if not _try_lock(fd, exclusive=True):
                os.close(fd)
                raise BlockingIOError(errno.EWOULDBLOCK, "lock is held", path)
            if _same_file(fd, path):
                break
            # A sweeper removed the file between our open and our lock: that lock guards
            # nothing anyone can see. Take the one at the path.
            _unlock(fd)
            os.close(fd)
        self.fd: int | None = fd
        self.size = os.fstat(fd).st_size
        fault("lock.held")

    def note(self, text: str) -> None:
        """Records a note in the lock file, overwriting the previous one in place.

        Padded with spaces to at least NOTE_SIZE and to the longest note written before, so a
        shorter note never leaves the tail of a longer one behind; readers read to the end.
        """
        if self.fd is None:
            return
        data = text.encode().ljust(max(NOTE_SIZE, self.size))
        self.size = len(data)
        _write_at_start(self.fd, data)

    def release(self, remove: bool = True) -> None:
        if self.fd is None:
            return
        if remove:
            _unlink_quietly(self.path)
        os.close(self.fd)
        self.fd = None


class Mutex:
    """A short critical section shared by processes: a blocking OS lock on a file that stays.

    The kernel wakes the next waiter the moment the holder unlocks (or dies), so there is no
    polling delay; the file is never unlinked, so every process locks the same inode.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> Mutex:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_BINARY, FILE_MODE)
        try:
            _lock_blocking(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        fault("mutex.held")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            _unlock(self.fd)
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def probe_lock(path: str) -> tuple[bool, str]:
    """(held, note): whether a live process holds the lock at `path`, and its note.

    Writes nothing: the file is opened read-only and never created. A missing file counts as not
    held.
    """
    try:
        fd = os.open(path, os.O_RDONLY | O_BINARY)
    except FileNotFoundError:
        return False, ""
    try:
        note = _read_note(fd)
        held = not _try_lock(fd, exclusive=False)
        if not held:
            _unlock(fd)
        return held, note
    finally:
        os.close(fd)


def take_stale_lock(path: str) -> HeldLock | None:
    """Takes the lock at `path` if its holder is gone (None if it is alive or the file is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | O_BINARY)
    except FileNotFoundError:
        return None
    if not _try_lock(fd, exclusive=True):
        os.close(fd)
        return None
    lock = HeldLock.__new__(HeldLock)
    lock.path, lock.fd, lock.size = path, fd, os.fstat(fd).st_size
    fault("lock.held")
    return lock


def read_note(lock: HeldLock) -> str:
    assert lock.fd is not None
    return _read_note(lock.fd)


def modified_at(lock: HeldLock) -> float | None:
    """When the lock's note was last written (None if that cannot be told)."""
    try:
        return os.fstat(lock.fd).st_mtime if lock.fd is not None else None
    except OSError:
        return None


def _read_note(fd: int) -> str:
    """The whole note: a busy worker's list of uncommitted results can outgrow NOTE_SIZE."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while len(chunks) < MAX_NOTE_CHUNKS and (chunk := os.read(fd, 1 << 16)):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


if fcntl is not None:
    def _try_lock(fd: int, exclusive: bool) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_blocking(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
else:
    def _try_lock(fd: int, exclusive: bool) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    def _lock_blocking(fd: int) -> None:
        while True:  # LK_LOCK gives up after about 10 s; keep waiting like flock does
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue


def open_append(path: str) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_BINARY, FILE_MODE)
    return os.fdopen(fd, "ab")
