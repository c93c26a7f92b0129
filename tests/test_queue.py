"""The queue's rules, on every backend: retries, backoff, the DLQ, ids, recovery, settings."""
from __future__ import annotations

import time

import pytest

from queuectl.core.errors import (
    ConfigError,
    DuplicateJobError,
    InvalidStateError,
    JobNotFoundError,
    ValidationError,
)
from queuectl.core.job import JobState
from queuectl.core.queue import Outcome, QueueManager


def fail(manager: QueueManager, owner: str = "w1"):
    job = manager.claim(owner)
    return manager.finish(job, Outcome(exit_code=1, error="Exit code 1: boom",
                                       started=time.time(), finished=time.time()))


def test_enqueue_uses_the_configured_default_retries(manager):
    manager.set_config("max-retries", "5")
    assert manager.enqueue("true").max_retries == 5
    assert manager.enqueue("true", max_retries=0).max_retries == 0


def test_json_spec_sets_id_and_retries(manager):
    job = manager.enqueue('{"id":"job1","command":"sleep 2","max_retries":3}')
    assert (job.id, job.command, job.max_retries) == ("job1", "sleep 2", 3)
    with pytest.raises(DuplicateJobError):
        manager.enqueue('{"id":"job1","command":"true"}')


def test_a_file_of_jobs_is_stored_whole_and_each_job_found_by_its_id(manager):
    """`enqueue --file`, on every backend and on the JSON store's fallbacks (no syncfs: each file
    is synced by name, the bulk id tables too)."""
    import json
    specs = [json.dumps({"id": f"f-{i}", "command": f"echo {i}"}) for i in range(5)]
    assert [j.id for j in manager.enqueue_many(specs)] == [f"f-{i}" for i in range(5)]
    assert manager.counts()[JobState.PENDING] == 5
    assert [manager.storage.get(f"f-{i}").command for i in range(5)] == [f"echo {i}" for i in range(5)]


@pytest.mark.parametrize("text", ["", "   ", "{bad json", '{"command": 1}', "a\x00b"])
def test_bad_jobs_are_refused_and_nothing_is_stored(manager, text):
    with pytest.raises(ValidationError):
        manager.enqueue(text)
    assert sum(manager.counts().values()) == 0


def test_success_first_time_counts_one_attempt(manager):
    manager.storage.register_owner("w1")
    manager.enqueue("true")
    job = manager.claim("w1")
    done = manager.finish(job, Outcome(exit_code=0, started=time.time(), finished=time.time()))
    assert done.state is JobState.COMPLETED and done.attempts == 1 and done.exit_code == 0
    assert done.history[-1]["exit_code"] == 0


def test_failures_back_off_exponentially_then_land_in_the_dlq(manager):
    manager.storage.register_owner("w1")
    manager.set_config("backoff_base", "3")
    job = manager.enqueue("false", max_retries=2)
    delays = []
    for _ in range(2):
        before = time.time()
        failed = fail(manager)
        assert failed.state is JobState.FAILED
        delays.append(failed.due_at - before)
        assert manager.claim("w1") is None  # not due yet
        current = manager.storage.get(job.id)
        manager.storage.update(current, current.evolve(due_at=time.time()))  # skip the wait
    assert delays[0] == pytest.approx(3, abs=0.5) and delays[1] == pytest.approx(9, abs=0.5)
    dead = fail(manager)
    assert dead.state is JobState.DEAD and dead.attempts == 3
    assert dead.last_error == "Exit code 1: boom"
    assert len(dead.history) == 3


def test_zero_retries_means_one_attempt(manager):
    manager.storage.register_owner("w1")
    manager.enqueue("false", max_retries=0)
    assert fail(manager).state is JobState.DEAD


def test_backoff_respects_the_cap(manager):
    manager.storage.register_owner("w1")
    manager.set_config("backoff_base", "1000")
    manager.set_config("backoff_max", "5")
    manager.enqueue("false", max_retries=3)
    before = time.time()
    assert fail(manager).due_at - before == pytest.approx(5, abs=0.5)


def test_dlq_retry_resets_attempts_and_accepts_a_prefix(manager):
    manager.storage.register_owner("w1")
    job = manager.enqueue("false", max_retries=0)
    fail(manager)
    retried = manager.retry_dead(job.id[:8])
    assert retried.state is JobState.PENDING and retried.attempts == 0
    assert manager.storage.get(job.id).state is JobState.PENDING
    with pytest.raises(InvalidStateError):
        manager.retry_dead(job.id)


def test_unknown_and_ambiguous_ids(manager):
    manager.enqueue('{"id":"abc1","command":"true"}')
    manager.enqueue('{"id":"abc2","command":"true"}')
    with pytest.raises(JobNotFoundError, match="matches 2 jobs: abc1, abc2"):
        manager.resolve("abc")
    with pytest.raises(JobNotFoundError):
        manager.resolve("zzz")
    with pytest.raises(ValidationError):
        manager.resolve("../../etc/passwd")
    assert manager.resolve("abc1").id == "abc1"


def test_a_dead_workers_attempt_counts_and_the_job_runs_again(manager):
    manager.storage.register_owner("doomed")
    job = manager.enqueue("sleep 10", max_retries=1)
    manager.claim("doomed")
    manager.storage.unregister_owner("doomed")
    recovered = manager.recover()
    assert [j.id for j in recovered] == [job.id]
    again = manager.storage.get(job.id)
    assert again.state is JobState.PENDING and again.attempts == 1
    assert "Worker died" in again.last_error
    manager.storage.register_owner("doomed2")
    manager.claim("doomed2")
    manager.storage.unregister_owner("doomed2")
    manager.recover()
    assert manager.storage.get(job.id).state is JobState.DEAD  # two attempts were allowed


def test_a_job_taken_but_not_started_goes_back_without_a_death(manager):
    """A worker that dies between taking a job and recording its start ran nothing: the job's
    own last error and history stay, and no attempt is counted (on every backend)."""
    manager.storage.register_owner("w1")
    job = manager.enqueue("exit 3", max_retries=2)
    taken = manager.claim("w1")
    failed = manager.finish(taken, Outcome(exit_code=3, error="Exit code 3", started=time.time(),
                                           finished=time.time()))
    manager.storage.update(failed, failed.evolve(due_at=time.time()))  # due again at once
    manager.storage.flush()
    manager.storage.register_owner("doomed")
    taken_only = manager.storage.claim("doomed", time.time())  # taken; its start never recorded
    assert taken_only is not None and taken_only.id == job.id
    manager.storage.unregister_owner("doomed")
    manager.recover()
    back = manager.storage.get(job.id)
    assert back.state in (JobState.PENDING, JobState.FAILED) and back.attempts == 1  # runnable again
    assert back.last_error == "Exit code 3" and len(back.history) == 1


def test_a_live_workers_job_is_never_recovered(manager):
    manager.storage.register_owner("alive")
    manager.enqueue("sleep 10")
    manager.claim("alive")
    assert manager.recover() == []


def test_release_returns_the_job_without_counting_the_attempt(manager):
    manager.storage.register_owner("w1")
    manager.enqueue("sleep 10")
    job = manager.claim("w1")
    back = manager.release(job, "Interrupted by a forced stop")
    assert back.state is JobState.PENDING and back.attempts == 0


@pytest.mark.parametrize("key,value", [("nope", "1"), ("max_retries", "abc"), ("max_retries", "-1"),
                                       ("job_timeout", "1e309"), ("backoff_base", "0.5"),
                                       ("log_level", "LOUD"), ("storage_path", "x"),
                                       ("worker_count", "0"), ("max_retries", "2.5")])
def test_invalid_settings_are_refused_and_nothing_is_written(manager, key, value):
    with pytest.raises(ConfigError):
        manager.set_config(key, value)
    assert manager.storage.load_config() == {}


def test_settings_persist_across_managers(manager):
    manager.set_config("job-timeout", "7")
    assert QueueManager(manager.storage).config.job_timeout == 7
