"""The job record, its states, and the pure rules about retries."""
from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field, fields
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
PRIORITY_LIMIT = 1_000_000
MAX_DEPENDENCIES = 100
MAX_UNIQUE_KEY = 256
# Seconds; a job due later than this is surely a typo (ten years).
MAX_DELAY = 10 * 365 * 86400
MAX_TIMEOUT = 30 * 86400
# due_at of a job waiting for its dependencies: never due until they complete.
BLOCKED = 32503680000.0  # 3000-01-01
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_GMTIME_MAX = 32503680000.0  # 3000-01-01
_last_second: list = [None, ""]  # see `now_iso`
# Milliseconds as three digits: a format spec is parsed at every use, a table lookup is not.
MILLIS = tuple(f"{ms:03d}" for ms in range(1000))


_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
# What a stored job's fields must hold; a file that breaks this is set aside, not run.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "command": (str,), "attempts": (int,), "max_retries": (int,), "created_at": (str,),
    "updated_at": (str,), "priority": (int,), "due_at": (int, float), "seq": (int,), "timeout": _OPT_INT,
    "last_error": _OPT_STR, "exit_code": _OPT_INT, "started_at": _OPT_STR, "finished_at": _OPT_STR,
    "worker_id": _OPT_STR, "history": (list,), "after": (list,), "no_retry_on": (list, type(None)),
    "unique_key": _OPT_STR,
}


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
        return self in (PENDING, FAILED)


# The states as names of this module, for code that runs a few times a job: reading a member off
# the class goes through the Enum metaclass's __getattr__ hook (3.11), some 900 instructions a read.
PENDING, PROCESSING, COMPLETED, FAILED, DEAD = (
    JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED, JobState.DEAD)


def now_iso(ts: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2026-11-28T09:06:28.123Z."""
    if ts is None:
        ts = time.time()
    if not 0 <= ts < _GMTIME_MAX:  # outside what every platform's gmtime takes
        dt = datetime.fromtimestamp(ts, tz=timezone.utc)
        # %Y does not pad: the year 1 came out as "1-01-01", which no ISO 8601 reader takes
        return f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    seconds = int(ts)
    micros = round((ts - seconds) * 1e6)  # rounded as datetime rounds, then cut to milliseconds
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    # A worker stamps a job four times, many jobs within one second: the formatted second is
    # kept (a fifth of the cost of going through datetime each time).
    cached_seconds, text = _last_second
    if seconds != cached_seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second[:] = (seconds, text)
    return f"{text}.{MILLIS[micros // 1000]}Z"


def short_id(job_id: str) -> str:
    """A job's id as listings show it: a generated one (a UUID) as its first 8 characters, which
    every command takes as a prefix; one the user chose in full, as two may share any prefix."""
    return job_id[:8] if _UUID.fullmatch(job_id) else job_id


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def printable(text: str, keep: str = " \t\n") -> str:
    """Job text as queuectl shows it: control and format characters (ESC, BEL, C1, bidi
    overrides) written as escapes, so a job's command, error or output cannot retitle, clear or
    recolour the terminal of whoever reads it, nor disguise what it runs. Of the whitespace,
    only `keep` stays as it is (a log line keeps only the space: one record, one line)."""
    if text.isprintable():
        return text
    # A backslash is then written as two, so `\x1b` typed in a command stays apart from ESC.
    return "".join("\\\\" if c == "\\" else c if c.isprintable() or c in keep else _escape(c)
                   for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


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
    after: list[str] = field(default_factory=list)
    no_retry_on: list[int] | None = None
    unique_key: str | None = None

    def __post_init__(self) -> None:
        if type(self.state) is not JobState:
            # Enum's own lookup goes through its metaclass's __call__ and __new__ in Python
            state = self.state
            self.state = _STATES[state] if type(state) is str and state in _STATES else JobState(state)
        values = self.__dict__
        # The fields' types, in order (as __init__ and `from_dict` set them): a worker reads a
        # job a claim, nearly always with types seen before, and one lookup answers for all.
        kinds = tuple(map(type, values.values()))
        if kinds not in _TYPES_SEEN:
            for name, allowed in _FIELD_TYPE_ITEMS:
                value = values[name]
                # Exact types first: what JSON gives. Subclasses pass too, but a bool is no int.
                if type(value) not in allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
                    raise TypeError(f"job field '{name}' has the wrong type ({type(value).__name__})")
            if len(_TYPES_SEEN) < TYPES_SEEN_MAX and len(kinds) == len(_FIELD_NAMES):
                _TYPES_SEEN.add(kinds)
        if (self.history and not all(type(h) is dict or isinstance(h, dict) for h in self.history)) or \
                (self.after and not all(type(a) is str or isinstance(a, str) for a in self.after)):
            raise TypeError("job fields 'history' and 'after' must be lists of objects and of ids")
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

    @property
    def blocked(self) -> bool:
        """Waiting for its dependencies to complete."""
        return self.due_at >= BLOCKED

    def evolve(self, **changes: Any) -> Job:
        """A copy with the changes applied and updated_at set to now.

        For the queue's own transitions: the fields are not validated again (that is what
        `replace` would do, at a cost a worker pays several times per job).
        """
        if "updated_at" not in changes:
            changes["updated_at"] = now_iso()
        if not changes.keys() <= _KNOWN_FIELDS:
            unknown = changes.keys() - _KNOWN_FIELDS
            raise TypeError(f"unknown job field(s): {', '.join(sorted(unknown))}")
        new = object.__new__(Job)  # a shallow copy, as copy.copy makes, without its protocol
        new.__dict__ = {**self.__dict__, **changes}
        return new

    def public_dict(self) -> dict[str, Any]:
        """The documented JSON view (`--json`, the dashboard's API): stable keys, ISO times."""
        runnable = self.state.runnable
        return {
            "id": self.id, "command": self.command, "state": self.state.value,
            "attempts": self.attempts, "max_retries": self.max_retries, "priority": self.priority,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "run_at": now_iso(self.due_at) if runnable and not self.blocked else None,
            "waiting_for_dependencies": runnable and self.blocked,
            "timeout": self.timeout, "no_retry_on": self.no_retry_on, "after": list(self.after),
            "unique_key": self.unique_key, "last_error": self.last_error, "exit_code": self.exit_code,
            "worker": self.worker_id, "history": list(self.history),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        d["history"] = [dict(h) for h in self.history]
        d["after"] = list(self.after)
        d["no_retry_on"] = None if self.no_retry_on is None else list(self.no_retry_on)
        return d

    def to_json(self) -> bytes:
        # Not through asdict(): its deep copy cost more than a worker's whole bookkeeping.
        return _ENCODER.encode(self._fields()).encode()

    def _fields(self) -> dict[str, Any]:
        values = self.__dict__
        if len(values) == len(_FIELD_NAMES):  # the fields, in order (see `from_dict`): one copy
            d = dict(values)
        else:
            d = {name: getattr(self, name) for name in _FIELD_NAMES}
        d["state"] = _STATE_VALUES[self.state]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        if list(data) == _FIELD_LIST:
            # What to_json writes: every field, in order. The generated __init__ would take them
            # one keyword at a time, a third of the cost of reading a job; checked the same way.
            job = object.__new__(cls)
            job.__dict__ = dict(data)
            job.__post_init__()
            return job
        if data.keys() <= _KNOWN_FIELDS:
            return cls(**data)
        return cls(**{k: v for k, v in data.items() if k in _KNOWN_FIELDS})

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        # queuectl writes UTF-8: decoded here, json.loads would first guess among the UTF-16/32s.
        try:
            text = raw.decode()
            # raw_decode: decode() would also match a whitespace pattern at both ends
            data, end = _RAW_DECODE(text)
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise ValueError("extra data after the object")
        except ValueError:
            data = json.loads(raw)  # a hand-edited file with a BOM, or in UTF-16/32, reads as before
        if not isinstance(data, dict):
            raise ValueError("job file does not hold an object")
        return cls.from_dict(data)


_FIELD_NAMES = tuple(f.name for f in fields(Job))
_FIELD_LIST = list(_FIELD_NAMES)
_RAW_DECODE = json.JSONDecoder().raw_decode
_KNOWN_FIELDS = frozenset(_FIELD_NAMES)
_FIELD_TYPE_ITEMS = tuple(FIELD_TYPES.items())
_STATES = {state.value: state for state in JobState}
# `.value` of an Enum member is a Python-level descriptor; a dict lookup is not.
_STATE_VALUES = {state: state.value for state in JobState}
# Type signatures of jobs that passed the checks (see `Job.__post_init__`): a handful in practice.
_TYPES_SEEN: set[tuple[type, ...]] = set()
TYPES_SEEN_MAX = 1024
# One encoder for every job file: json.dumps builds a new one per call when given options.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


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
    """Reads a JSON job spec; returns its fields, checked (see `check_spec`)."""
    try:
        data = _DECODE_SPEC(text)
    except ValueError as e:
        raise ValidationError(f"invalid JSON job spec: {e}") from None
    except RecursionError:
        raise ValidationError("invalid JSON job spec: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValidationError("a JSON job spec must be an object")
    if "command" not in data:
        raise ValidationError("job spec has no 'command'")
    return check_spec(data)


def check_spec(data: dict[str, Any]) -> dict[str, Any]:
    """Checks job fields given as JSON or as options; unknown keys and wrong types are errors."""
    unknown = data.keys() - _SPEC_KEYS
    if unknown:
        raise ValidationError(f"unknown key(s) in job spec: {', '.join(sorted(unknown))}")
    spec = {key: SPEC_CHECKS[key](value) for key, value in data.items() if value is not None}
    if "run_at" in spec and "delay" in spec:
        raise ValidationError("give run_at or delay, not both")
    return spec


def validate_priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > PRIORITY_LIMIT:
        raise ValidationError(f"priority must be a whole number between -{PRIORITY_LIMIT} and {PRIORITY_LIMIT}")
    return value


def validate_run_at(value: Any) -> float:
    if not isinstance(value, str):
        raise ValidationError("run_at must be an ISO 8601 time string")
    try:
        when = parse_iso(value)
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f"run_at '{value}' is not an ISO 8601 time (e.g. 2026-12-01T09:00:00Z)") from None
    if when > time.time() + MAX_DELAY:
        raise ValidationError("run_at is more than ten years away")
    return when


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from a number or a string like 90, 90s, 5m, 2h, 1d, 1w."""
    if isinstance(value, bool):
        raise ValidationError(f"{what} must be a number of seconds or like 90s, 5m, 2h, 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*[smhdw]?\s*", value):
        text = value.strip()
        unit = text[-1] if text[-1] in DURATION_UNITS else "s"
        seconds = float(text.rstrip("smhdw").strip()) * DURATION_UNITS[unit]
    else:
        raise ValidationError(f"{what} '{value}' must be a number of seconds or like 90s, 5m, 2h, 1d")
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DELAY:
        raise ValidationError(f"{what} must be between 0 and ten years")
    return seconds


def validate_timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT:
        raise ValidationError(f"timeout must be a whole number of seconds from 0 (none) to {MAX_TIMEOUT}")
    return value


def validate_exit_codes(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 255 for c in value):
        # 0 is success: a job never fails with it, so listing it is a slip, not a rule
        raise ValidationError("no_retry_on must be a list of failing exit codes (1-255)")
    return sorted(set(value))


def validate_after(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("after must be a list of job ids")
    if len(value) > MAX_DEPENDENCIES:
        raise ValidationError(f"a job may wait for at most {MAX_DEPENDENCIES} others")
    return [validate_id(v.strip()) for v in value]


def validate_unique_key(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_UNIQUE_KEY or "\x00" in value:
        raise ValidationError(f"unique_key must be a non-empty string of at most {MAX_UNIQUE_KEY} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("unique_key is not valid UTF-8") from None
    return value


SPEC_CHECKS = {
    "id": validate_id,
    "command": validate_command,
    "max_retries": validate_retries,
    "priority": validate_priority,
    "run_at": validate_run_at,
    "delay": lambda v: parse_duration(v, "delay"),
    "timeout": validate_timeout,
    "no_retry_on": validate_exit_codes,
    "after": validate_after,
    "unique_key": validate_unique_key,
}
_SPEC_KEYS = frozenset(SPEC_CHECKS)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: `{"command":"a","command":"b"}` is a mistake
    that json would settle silently in favour of the last."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key '{twice}'")
    return data


# One decoder for every spec: json.loads with an option builds a new one each call.
_DECODE_SPEC = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys).decode


def is_spec(text: str) -> bool:
    return text.lstrip().startswith("{")
