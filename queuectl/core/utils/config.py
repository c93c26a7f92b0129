"""Configuration: every default in one place, each with the reason for its value.

The configuration lives in the store itself (``config.json`` in the data directory for the JSON
backend), so every command that uses a store sees the same settings. ``storage_path`` is shown
but not stored: it names the store, so it is chosen with ``--storage-path`` or
``QUEUECTL_STORAGE_PATH``, never from inside the store it would point away from.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ValidationError
from ..job import parse_duration

DEFAULT_STORAGE_PATH = "queuectl_data"
STORAGE_ENV = "QUEUECTL_STORAGE_PATH"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    kind: Any
    low: float | None
    high: float | None
    help: str


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        # Three retries after the first attempt is the common default (Sidekiq retries far more,
        # but shell jobs that fail four times rarely succeed on the fifth).
        Setting("max_retries", 3, int, 0, 1000, "retries after the first attempt"),
        # 2**k seconds after the k-th failure: 2, 4, 8, ... seconds.
        Setting("backoff_base", 2, float, 1, 1000, "retry delay is backoff_base ** failures seconds"),
        # One hour: past that a retry is better made by a person than by a timer.
        Setting("backoff_max", 3600, int, 1, 7 * 86400, "cap on one retry delay, in seconds"),
        # Thirty seconds keeps a hung command from holding a worker forever; 0 disables it.
        Setting("job_timeout", 30, int, 0, 30 * 86400, "seconds before a job is killed (0 = none)"),
        # One worker per `start` unless asked: shell jobs often contend for the same resources.
        Setting("worker_count", 1, int, 1, 128, "worker processes started by `start`"),
        Setting("storage_path", DEFAULT_STORAGE_PATH, str, None, None,
                "data directory (set with --storage-path or QUEUECTL_STORAGE_PATH)"),
        Setting("log_level", "INFO", str, None, None, "DEBUG, INFO, WARNING or ERROR"),
        # Idle workers look for due jobs this often when nothing wakes them earlier.
        Setting("poll_interval", 0.2, float, 0.01, 60, "seconds between looks for work when idle"),
        # Exit codes that mean "retrying will not help" (e.g. 2 for a usage error); none by default.
        Setting("no_retry_on", [], list, 1, 255, "exit codes that go straight to the DLQ, e.g. 2,64"),
        # 1 MiB per stream per attempt keeps every log useful and a runaway job's output bounded.
        Setting("log_max_bytes", 1048576, int, 0, 1 << 30,
                "bytes of stdout and of stderr kept per attempt (the tail; 0 = no cap)"),
        # Unlimited by default; a limit protects a downstream service from a burst.
        Setting("rate_limit", 0, float, 0, 100000, "job starts per second across all workers (0 = no limit)"),
        # Ten thousand finished jobs are plenty of history and stay fast to list.
        Setting("keep_completed", 10000, "count_or_age", 0, 10**9,
                "completed jobs kept: a count, or an age like 7d (0 = keep all)"),
    )
}

READ_ONLY = frozenset({"storage_path"})


def normalize_key(key: str) -> str:
    """Accepts `max-retries` as well as `max_retries`; raises ConfigError for unknown keys."""
    k = key.strip().lower().replace("-", "_")
    if k not in SETTINGS:
        raise ConfigError(f"unknown config key '{key}' (known: {', '.join(SETTINGS)})")
    return k


def _digits(text: str) -> bool:
    """ASCII digits only: isdigit() also takes '²', which int() refuses, and int() takes '٣'."""
    return text.isascii() and text.isdigit()


def _number(text: str, kind: type) -> float:
    if "_" in text or not text.isascii():
        raise ConfigError(f"'{text}' is not {'a number' if kind is float else 'a whole number'}")
    try:
        value = float(text) if kind is float else int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"'{text}' is not {'a number' if kind is float else 'a whole number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"'{text}' is not a finite number")
    return value


def parse_value(key: str, raw: Any) -> Any:
    """Turns a user's text (or a stored JSON value) into the setting's type, checking its range."""
    key = normalize_key(key)
    s = SETTINGS[key]
    if s.key == "log_level":
        value = str(raw).strip().upper()
        if value not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not '{raw}'")
        return value
    if s.kind is str:
        return str(raw)
    if s.kind is list:
        return _exit_codes(key, raw)
    if s.kind == "count_or_age":
        return _count_or_age(key, raw)
    if isinstance(raw, bool):
        raise ConfigError(f"{key} must be a number, not {raw!r}")
    value = _number(str(raw).strip(), s.kind) if isinstance(raw, str) else raw
    if s.kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key} must be a whole number, not {raw!r}")
        value = int(value)
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, not {raw!r}")
    if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
        raise ConfigError(f"{key} must be between {_fmt(s.low)} and {_fmt(s.high)}, not {raw}")
    if s.kind is float and float(value).is_integer():
        value = int(value)
    return value


def _exit_codes(key: str, raw: Any) -> list[int]:
    if isinstance(raw, list):
        items = raw
    else:
        text = str(raw).replace(" ", "")
        items = text.split(",") if text else []
        if "" in items:  # `2,,3`: a slip, refused as `enqueue --no-retry-on` refuses it
            raise ConfigError(f"{key}: '{raw}' has an empty item")
    codes = []
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, int) or _digits(str(item))) or not 1 <= int(item) <= 255:
            # 0 is success: a job never fails with it
            raise ConfigError(f"{key} must be a comma-separated list of failing exit codes 1-255, not '{raw}'")
        codes.append(int(item))
    return sorted(set(codes))


def _count_or_age(key: str, raw: Any) -> int | str:
    text = str(raw).strip().lower()
    if _digits(text) and not isinstance(raw, bool):
        if int(text) > 10**9:
            raise ConfigError(f"{key} must be at most 1000000000")
        return int(text)
    if len(text) > 1 and _digits(text[:-1]) and text[-1] in "smhdw":
        try:
            age = parse_duration(text, key)  # what trimming reads it with: an age it refuses is refused here
        except ValidationError as e:
            raise ConfigError(str(e)) from None
        if not age:  # unlike 0, which keeps all, it would delete every completed job each minute
            raise ConfigError(f"{key} '{raw}' would keep no completed job: give 0 to keep all, or a longer age")
        return text
    raise ConfigError(f"{key} must be a count (e.g. 10000) or an age (e.g. 7d), not '{raw}'")


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Config:
    """The effective settings: defaults overlaid with what the store holds."""

    def __init__(self, stored: dict[str, Any] | None = None, storage_path: str = DEFAULT_STORAGE_PATH):
        self.values: dict[str, Any] = {k: copy.copy(s.default) for k, s in SETTINGS.items()}
        # Stored values that no longer pass (edited by hand, say): the default applies, and the
        # next `config set` writes it in their place. Refusing them would lock the user out.
        self.ignored: list[str] = []
        for key, raw in (stored or {}).items():
            if key in SETTINGS and key not in READ_ONLY:
                try:
                    self.values[key] = parse_value(key, raw)
                except ConfigError as e:
                    self.ignored.append(str(e) if str(e).startswith(key) else f"{key}: {e}")
        self.values["storage_path"] = storage_path
        # Read as attributes too: a lookup that misses and falls back to __getattr__ costs an
        # AttributeError raised and caught, and a worker reads four settings a job.
        self.__dict__.update(self.values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def items(self) -> list[tuple[str, Any]]:
        return list(self.values.items())

    def stored(self) -> dict[str, Any]:
        """What is worth writing: the values that differ from the defaults, minus read-only keys."""
        return {k: v for k, v in self.values.items() if k not in READ_ONLY}

    @staticmethod
    def format(value: Any) -> str:
        return _fmt(value)


def validate_assignment(key: str, raw: Any) -> tuple[str, Any]:
    """Checks a `config set`; returns the canonical key and the typed value."""
    key = normalize_key(key)
    if key in READ_ONLY:
        raise ConfigError(f"{key} is not stored in the config; use --storage-path or {STORAGE_ENV}")
    return key, parse_value(key, raw)


