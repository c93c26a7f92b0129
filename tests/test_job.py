"""The job record and the pure rules: backoff, spec parsing, validation."""
from __future__ import annotations

import pytest

from queuectl.core.errors import ValidationError
from queuectl.core.job import Job, JobState, backoff_delay, parse_iso, parse_spec, validate_id


@pytest.mark.parametrize("failures,expected", [(0, 0), (1, 2), (2, 4), (3, 8), (10, 1024)])
def test_backoff_is_base_to_the_failures(failures, expected):
    assert backoff_delay(failures, 2, 3600) == expected


def test_backoff_is_capped_even_when_huge():
    assert backoff_delay(5000, 10, 3600) == 3600
    assert backoff_delay(20, 2, 60) == 60


def test_job_round_trips_through_json():
    job = Job.new("echo 'hi' | tr a-z A-Z; ünïcode", 4, job_id="a.b-c_d")
    again = Job.from_json(job.to_json())
    assert again == job
    assert again.state is JobState.PENDING and again.attempts == 0 and again.max_retries == 4
    assert again.created_at.endswith("Z") and again.created_at == again.updated_at


def test_a_stored_job_reads_the_same_whatever_the_order_or_extra_keys_of_its_fields():
    """A file as to_json writes it takes the short way (one dict copy); any other order, an
    unknown key or a missing one the generated __init__: both give the same job, and both check."""
    import json

    job = Job.new("true", 2, job_id="j1").evolve(attempts=1, history=[{"attempt": 1}])
    data = json.loads(job.to_json())
    shuffled = dict(reversed(list(data.items())))
    extra = {**data, "from_a_newer_version": 1}
    short = {k: v for k, v in data.items() if k not in ("unique_key", "no_retry_on")}
    for variant in (data, shuffled, extra, short):
        again = Job.from_json(json.dumps(variant).encode())
        assert again == job and again.state is JobState.PENDING
        assert json.loads(again.to_json()) == data
        assert list(json.loads(again.to_json())) == list(data)  # written in field order again
    # After good jobs of the same shape (their types are remembered, see __post_init__)
    for bad in ({**data, "attempts": "1"}, {**data, "history": "not a list"}, {**data, "attempts": True},
                {**data, "history": [1]}, {**data, "after": [2]}, {**data, "timeout": 1.5}):
        with pytest.raises(TypeError):
            Job.from_json(json.dumps(bad).encode())
    for state in ("bogus", ["pending"], None):
        with pytest.raises(ValueError):
            Job.from_json(json.dumps({**data, "state": state}).encode())
    assert Job.from_json(job.to_json() + b"\n\t ") == job  # JSON's own whitespace may follow
    for tail in (b" x", b"\x0b", b"{}"):
        with pytest.raises(ValueError):
            Job.from_json(job.to_json() + tail)
    with pytest.raises(ValueError):
        Job.from_json(b"\xff{}")  # not UTF-8: unreadable like any other broken file


def test_job_refuses_an_empty_command():
    with pytest.raises(ValidationError):
        Job.new("   ", 3)


def test_spec_accepts_the_documented_keys():
    spec = parse_spec('{"id":"job1","command":"sleep 2","max_retries":3}')
    assert spec == {"id": "job1", "command": "sleep 2", "max_retries": 3}


@pytest.mark.parametrize("text", [
    "{", "[]", '"x"', "{}", '{"command": 5}', '{"command": ""}', '{"command": "x", "max_retries": -1}',
    '{"command": "x", "max_retries": 1.5}', '{"command": "x", "max_retries": true}',
    '{"command": "x", "max_retries": NaN}', '{"command": "x", "id": "../etc"}',
    '{"command": "x", "id": ""}', '{"command": "x", "nope": 1}', '{"command": ["x"]}',
    '{"command": "x", "max_retries": 100000000000000000000}',
])
def test_spec_rejects_bad_input(text):
    with pytest.raises(ValidationError):
        parse_spec(text)


@pytest.mark.parametrize("job_id", ["..", ".hidden", "a/b", "a\\b", "", "x" * 129, "a b", "é"])
def test_ids_that_could_escape_a_folder_are_refused(job_id):
    with pytest.raises(ValidationError):
        validate_id(job_id)


def test_now_iso_formats_as_datetime_does_at_the_edges():
    from datetime import datetime, timezone

    from queuectl.core.job import now_iso

    def reference(ts: float) -> str:
        dt = datetime.fromtimestamp(ts, tz=timezone.utc)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"

    edges = [0.0, 1.9999996, 1.9994996, 1796063265.001, 1796063264.9999999, 1796063264.0005,
             2**31 + 0.5, 32503679999.999, 32503680000.25]
    for ts in edges:
        assert now_iso(ts) == reference(ts), ts
    assert now_iso(1796063264.0339) == "2026-11-30T18:27:44.033Z"
    for early in ("0001-01-01T00:00:00Z", "0999-12-31T23:59:59Z"):  # a four-digit year, as ISO 8601 has it
        assert now_iso(parse_iso(early)) == early.replace("Z", ".000Z")
        assert parse_iso(now_iso(parse_iso(early))) == parse_iso(early)


def test_every_setting_reads_as_an_attribute_and_none_hides_a_method():
    """Config copies the settings into its attributes (a lookup through __getattr__ raised and
    caught an AttributeError each time): a setting named like a method would hide it."""
    from queuectl.core.utils.config import SETTINGS, Config

    config = Config({"max_retries": 7})
    assert not set(SETTINGS) & set(vars(Config))
    assert config.max_retries == 7
    assert all(getattr(config, key) == value for key, value in config.items())
    with pytest.raises(AttributeError):
        config.no_such_setting  # noqa: B018
