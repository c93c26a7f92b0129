"""One exception root for everything queuectl raises on purpose.

Usage errors (exit 2) are wrong regardless of what the store holds: a bad value, an unknown key.
Runtime errors (exit 1) depend on the store or the machine: an unknown id, a full disk.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class QueuectlError(Exception):
    """Base of every error queuectl reports to a user; exits 1."""

    exit_code = EXIT_RUNTIME


class ValidationError(QueuectlError):
    """A value given by the user is malformed or out of range; exits 2."""

    exit_code = EXIT_USAGE


class ConfigError(ValidationError):
    """An unknown configuration key or an invalid configuration value."""


class JobNotFoundError(QueuectlError):
    """No job matches the id or prefix given, or several do; or the job has no such attempt."""


class DuplicateJobError(QueuectlError):
    """A job with this id already exists."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id  # which one, for a caller that adds many (`enqueue --file` names its line)


class InvalidStateError(QueuectlError):
    """The job is not in a state that allows the requested action."""


class StorageError(QueuectlError):
    """The store cannot be read or written (permissions, full disk, corrupt data)."""


class ConflictError(QueuectlError):
    """Another process changed the job first; the caller may re-read and retry."""
