"""The job record, its states, and the pure rules about retries."""
from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .errors import ValidationError

# Long enough for any real shell line; short enough that a runaway paste is caught early.
MAX_COMMAND_LENGTH = 65536
# Ids reach file names: a conservative alphabet and length keeps them safe on every filesystem.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MAX_RETRIES_LIMIT = 1000
# Attempt records kept per job; older ones are dropped so a job file stays small.
MAX_HISTORY = 20
SPEC_KEYS = frozenset({"id", "command", "max_retries"})


class JobState(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value

    @property
    def runnable(self) -> bool:
        """Pending and failed jobs are both waiting for their due time."""
        return self in (JobState.PENDING, JobState.FAILED)


def now_iso(ts: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2026-11-28T09:06:28.123Z."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO 8601 time; a time without a zone is local time."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return dt.timestamp()


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the given number of failed attempts: base ** failures, capped."""
    if failures <= 0:
        return 0.0
    try:
        delay = math.pow(base, failures)
    except OverflowError:
        return float(cap)
    return float(min(delay, cap))


@dataclass
class Job:
    """One shell command and everything known about its runs.

    `attempts` counts attempts started; `max_retries` is how many may follow the first, so a job
    may run at most `max_retries + 1` times. `due_at` (epoch seconds) is when a pending or failed
    job may next run; `seq` (enqueue time in ns) keeps FIFO order within a priority.
    """

    id: str
    command: str
    state: JobState = JobState.PENDING
    attempts: int = 0
    max_retries: int = 3
    created_at: str = ""
    updated_at: str = ""
    priority: int = 0
    due_at: float = 0.0
    seq: int = 0
    timeout: int | None = None
    last_error: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    worker_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.state, JobState):
            self.state = JobState(self.state)
        if not self.command or not self.command.strip():
            raise ValidationError("job command is empty")
        if self.attempts < 0 or self.max_retries < 0:
            raise ValidationError("attempts and max_retries cannot be negative")

    @classmethod
    def new(cls, command: str, max_retries: int, job_id: str | None = None, **extra: Any) -> Job:
        now = time.time()
        stamp = now_iso(now)
        return cls(id=job_id or str(uuid.uuid4()), command=command, max_retries=max_retries,
                   created_at=stamp, updated_at=stamp, due_at=now, seq=time.time_ns(), **extra)

    @property
    def retries_left(self) -> int:
        return self.max_retries + 1 - self.attempts

    def evolve(self, **changes: Any) -> Job:
        """A copy with the changes applied and updated_at set to now."""
        changes.setdefault("updated_at", now_iso())
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("job file does not hold an object")
        return cls.from_dict(data)


def validate_command(command: Any) -> str:
    if not isinstance(command, str):
        raise ValidationError("command must be a string")
    if not command.strip():
        raise ValidationError("command is empty")
    if len(command) > MAX_COMMAND_LENGTH:
        raise ValidationError(f"command is longer than {MAX_COMMAND_LENGTH} characters")
    if "\x00" in command:
        raise ValidationError("command contains a NUL byte")
    try:
        command.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("command is not valid UTF-8") from None
    return command


def validate_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not ID_PATTERN.fullmatch(job_id):
        raise ValidationError(
            "job id must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'")
    return job_id


def validate_retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("max_retries must be a whole number")
    if not 0 <= value <= MAX_RETRIES_LIMIT:
        raise ValidationError(f"max_retries must be between 0 and {MAX_RETRIES_LIMIT}")
    return value


def parse_spec(text: str) -> dict[str, Any]:
    """Reads a JSON job spec; returns the checked fields (command, and id/max_retries if given)."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise ValidationError(f"invalid JSON job spec: {e}") from None
    except RecursionError:
        raise ValidationError("invalid JSON job spec: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValidationError("a JSON job spec must be an object")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ValidationError(f"unknown key(s) in job spec: {', '.join(unknown)}")
    if "command" not in data:
        raise ValidationError("job spec has no 'command'")
    spec: dict[str, Any] = {"command": validate_command(data["command"])}
    if "id" in data:
        spec["id"] = validate_id(data["id"])
    if "max_retries" in data:
        spec["max_retries"] = validate_retries(data["max_retries"])
    return spec


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def is_spec(text: str) -> bool:
    return text.lstrip().startswith("{")
