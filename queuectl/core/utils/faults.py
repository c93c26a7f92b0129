"""Named fault points: tests make a process die at one chosen step of a write, on purpose.

A point is a call such as ``fault("write.before_replace")`` placed between two steps whose order
matters when the process is killed. Nothing happens unless the environment variable
QUEUECTL_FAULT names a point; it is read once, at import, so a point that is off costs one falsy
check. The format is ``POINT:N[:TRIP]``::

    QUEUECTL_FAULT=write.before_replace:3
        SIGKILL this process the 3rd time it reaches write.before_replace (os._exit where the
        platform has no SIGKILL); each process counts its own hits from zero (a forked helper,
        see helper.py, from its parent's count at the fork).
    QUEUECTL_FAULT=write.before_replace:3:/some/dir/trip
        the same, but only one process of all those that inherit the variable (a `start` and its
        workers) dies: the first to get there creates TRIP (naming the point and its pid), and
        no point fires anywhere once TRIP exists. Without it a respawned worker would die again.

A malformed value raises ValueError at import: a test that misspells a point must not pass
because nothing was ever killed.

The points (in the write helpers of queuectl/core/utils/fs.py; a backend's own helper for the
same kind of step may call one too):

    write.before_fsync    write_file: the temp file is written, not yet synced (if ever)
    write.before_replace  write_file: the temp file is synced, not yet renamed over its target
    write.after_replace   write_file: the target is replaced, its folder not yet synced
    stage.written         write_private: a new file (a staged job, a worker's result) is written
    sync.after            sync_filesystem: a batch is durable; its renames have not begun
    lock.held             HeldLock, take_stale_lock: an owner or manager lock was just taken
    mutex.held            Mutex: the lock of a short critical section was just taken
    rename.done           the JSON backend: a job file was just moved (a claim, a commit, a
                          result's rename, a recycled file), the next step not yet taken
    counts.written        the JSON backend: counts.json was just overwritten in place
    note.written          the JSON backend: a worker's lock note (its attempt, its process
                          group, its results not committed yet) was just rewritten
    id.marked             the JSON backend: a single enqueue just marked its id (created the
                          marker or took over a stale one); its job is not in place yet

`arm` sets or clears the fault inside a running process (a test's forked child).
"""
from __future__ import annotations

import os

ENV = "QUEUECTL_FAULT"
POINTS = ("write.before_fsync", "write.before_replace", "write.after_replace", "stage.written",
          "sync.after", "lock.held", "mutex.held", "rename.done", "counts.written",
          "note.written", "id.marked")

_target: tuple[str, int, str | None] | None = None
_hits = 0


def arm(spec: str | None) -> None:
    """Arms the fault `spec` (the QUEUECTL_FAULT format) with its count from zero; None disarms."""
    global _target, _hits
    _hits = 0
    if not spec:
        _target = None
        return
    name, _, rest = spec.partition(":")
    count, _, trip = rest.partition(":")  # TRIP may itself hold colons (a Windows drive)
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N[:TRIP] with POINT one of {', '.join(POINTS)}")
    _target = (name, int(count), trip or None)


def fault(name: str) -> None:
    """Kills this process if `name` is the armed point and this is the armed hit."""
    global _hits
    if not _target:
        return
    point, count, trip = _target
    if name != point:
        return
    _hits += 1
    if _hits != count:
        return
    if trip is not None:
        try:
            fd = os.open(trip, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another process of the run has already died at this point
        os.write(fd, f"{name}:{count} {os.getpid()}\n".encode())
        os.close(fd)
    import signal  # only a process about to die pays for the import

    kill = getattr(signal, "SIGKILL", None)
    if kill is not None:
        os.kill(os.getpid(), kill)
    os._exit(137)  # no SIGKILL (Windows), or it has not landed yet: end without any cleanup


arm(os.environ.get(ENV))
