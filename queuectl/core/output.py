"""A job's stdout and stderr, copied to files that never grow past a cap.

On POSIX the worker reads both pipes with select() in the same loop that watches timeouts, so
no thread is needed and a job that prints a gigabyte costs the store at most twice the cap: once
a file passes 2 x cap it is rewritten as a note of what was cut plus the last `cap` bytes.
"""
from __future__ import annotations

import os
import re
import select
from typing import IO

CHUNK = 65536
CUT_NOTE = b"[queuectl: %d earlier bytes cut]\n"


def read_from(path: str, sent: int) -> tuple[int, bytes]:
    """What an output file holds from byte `sent` of the stream on, for a reader that follows it
    while it grows and is cut: (the stream offset of the first byte returned, the bytes).

    The offset is above `sent` when bytes were cut before they were read. A missing file holds
    nothing yet; so does one caught being cut (tried again a few times first).
    """
    for _ in range(READ_TRIES):
        try:
            with open(path, "rb") as f:
                head = f.read(64)
                if not head:  # nothing yet, or caught between a cut's truncation and its write
                    return sent, b""
                note = _CUT_LINE.match(head)
                base, start = (int(note[1]), note.end()) if note else (0, 0)
                skip = max(0, sent - base)
                f.seek(start + skip)
                data = f.read()
                f.seek(0)
                again = f.read(len(head))
        except FileNotFoundError:
            return sent, b""
        # `CappedFile._compact` rewrites the file in place, and its note's count only grows: the
        # same head before and after means no cut came between, so `data` is at `base + skip`.
        if again == head:
            return base + skip, data
    return sent, b""


READ_TRIES = 5
_CUT_LINE = re.compile(re.escape(CUT_NOTE).replace(b"%d", rb"(\d{1,20})"))


class Follower:
    """Prints an output file as it grows and is cut (`logs --follow`): each byte once, in order,
    and a note of the bytes cut before they could be read, on a line of its own."""

    def __init__(self, path: str):
        self.path = path
        self.sent = 0  # bytes of the stream passed on so far, counted from its first byte
        self.last = b"\n"

    def poll(self) -> bytes:
        """What came since the last poll."""
        base, chunk = read_from(self.path, self.sent)
        out = b""
        if base > self.sent:
            out = (b"" if self.last == b"\n" else b"\n") + CUT_NOTE % (base - self.sent)
            self.last = b"\n"
        self.sent = base + len(chunk)
        if chunk:
            self.last = chunk[-1:]
        return out + chunk

    def end(self) -> bytes:
        """A newline if the output did not end with one, as `logs` adds."""
        return b"" if self.last == b"\n" else b"\n"


class CappedFile:
    """An append-only file that keeps only the last `cap` bytes once it passes 2 x cap."""

    def __init__(self, path: str, cap: int):
        self.path = path
        self.cap = cap
        self.cut = 0        # bytes dropped so far
        self.size = 0       # bytes in the file now, the note included
        self.note_len = 0
        self.f: IO[bytes] | None = None  # opened on the first byte: most jobs print nothing

    def fileobj(self) -> IO[bytes]:
        """The open file (created now if need be), for a command that writes it directly."""
        if self.f is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.f = os.fdopen(fd, "wb", buffering=0)
        return self.f

    def write(self, data: bytes) -> None:
        self.fileobj().write(data)
        self.size += len(data)
        if self.cap and self.size > 2 * self.cap:
            self._compact()

    def _compact(self) -> None:
        assert self.f is not None
        self.f.close()
        self.f = None
        with open(self.path, "rb") as f:
            f.seek(-self.cap, os.SEEK_END)
            tail = f.read()
        self.cut += self.size - self.note_len - len(tail)
        note = CUT_NOTE % self.cut
        with open(self.path, "wb") as f:
            f.write(note + tail)
        self.note_len = len(note)
        self.size = len(note) + len(tail)
        self.f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()

    def discard(self) -> None:
        """Removes a file left by an earlier run of the same attempt number (a recovered job)."""
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def close(self) -> None:
        if self.f is None:
            return
        if self.cap and self.size - self.note_len > self.cap:
            self._compact()  # what stays behind is the tail, at most `cap` bytes
        assert self.f is not None
        self.f.close()
        self.f = None


class Pump:
    """Copies data from pipes to capped files; `pump` waits up to a timeout for some."""

    def __init__(self, streams: dict[IO[bytes], CappedFile]):
        self.streams = {pipe.fileno(): (pipe, sink) for pipe, sink in streams.items()}

    @property
    def open(self) -> bool:
        return bool(self.streams)

    def pump(self, timeout: float, exit_fd: int | None = None) -> None:
        """Copies what arrives within `timeout`; returns early when `exit_fd` (a pidfd) fires."""
        watched = list(self.streams) + ([exit_fd] if exit_fd is not None else [])
        if not watched:
            return
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            if fd in self.streams:
                self._read(fd)

    def _read(self, fd: int) -> None:
        pipe, sink = self.streams[fd]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if data:
            sink.write(data)
        else:
            pipe.close()
            del self.streams[fd]

    def drain(self) -> None:
        """Reads what is already waiting, without waiting for processes that keep the pipe open."""
        for _ in range(10_000):
            if not self.streams:
                break
            ready, _, _ = select.select(list(self.streams), [], [], 0)
            if not ready:
                break
            for fd in ready:
                self._read(fd)
        for pipe, _sink in self.streams.values():
            pipe.close()
        self.streams.clear()


def tail_line(path: str, window: int = 4096) -> str:
    """The last non-empty line of a file (for `last_error`), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - window))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""
