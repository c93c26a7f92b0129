"""The storage contract: every backend must pass every test here (see the `storage` fixture)."""
from __future__ import annotations

import threading
import time

import pytest

from queuectl.core.errors import ConflictError, DuplicateJobError
from queuectl.core.job import Job, JobState
from queuectl.core.storage import ManagerInfo


def make(command="true", **kw) -> Job:
    return Job.new(command, 3, **kw)


def test_an_empty_store_has_nothing(storage):
    assert storage.get("nope") is None
    assert storage.match_ids("a") == []
    assert list(storage.jobs()) == []
    assert storage.counts() == {s: 0 for s in JobState}
    assert storage.claim("w1", time.time()) is None
    assert storage.managers() == []
    assert storage.load_config() == {}


def test_add_then_get_returns_an_equal_job(storage):
    job = make("echo 'a b' && printf '%s' \"ü\"", job_id="job-1")
    storage.add(job)
    assert storage.get("job-1") == job
    assert storage.counts()[JobState.PENDING] == 1


def test_duplicate_ids_are_refused(storage):
    storage.add(make(job_id="same"))
    with pytest.raises(DuplicateJobError) as refused:
        storage.add(make(job_id="same"))
    assert refused.value.job_id == "same"
    assert storage.counts()[JobState.PENDING] == 1


def test_a_batch_with_a_stored_id_is_refused_whole_and_names_that_id(storage):
    storage.add(make(job_id="same"))
    with pytest.raises(DuplicateJobError) as refused:
        storage.add_many([make(job_id="new-1"), make(job_id="same"), make(job_id="new-2")])
    assert refused.value.job_id == "same"
    assert storage.get("new-1") is None and storage.counts()[JobState.PENDING] == 1


def test_a_lazy_batch_that_raises_stores_nothing(storage):
    """`enqueue --file` hands its jobs over as it checks them: a bad line raises midway."""
    def jobs():
        yield make(job_id="lazy-1")
        yield make(job_id="lazy-2")
        raise ValueError("line 3: bad")

    with pytest.raises(ValueError, match="line 3"):
        storage.add_many(jobs())
    assert storage.get("lazy-1") is None and storage.counts()[JobState.PENDING] == 0


def test_match_ids_by_prefix(storage):
    for job_id in ("abc1", "abc2", "abd"):
        storage.add(make(job_id=job_id))
    assert storage.match_ids("abc") == ["abc1", "abc2"]
    assert storage.match_ids("x") == []


def test_claim_takes_priority_then_fifo(storage):
    low_old = make(job_id="low-old")
    storage.add(low_old)
    high = make(job_id="high", priority=5)
    storage.add(high)
    low_new = make(job_id="low-new")
    storage.add(low_new)
    order = [storage.claim("w1", time.time()).id for _ in range(3)]
    assert order == ["high", "low-old", "low-new"]


def test_claim_skips_jobs_not_yet_due(storage):
    later = make(job_id="later")
    later.due_at = time.time() + 60
    storage.add(later)
    storage.add(make(job_id="now"))
    job = storage.claim("w1", time.time())
    assert job.id == "now"
    assert storage.claim("w1", time.time()) is None


def test_claimed_job_is_processing_and_owned(storage):
    storage.register_owner("w1")
    storage.add(make(job_id="j"))
    job = storage.claim("w1", time.time())
    assert job.state is JobState.PROCESSING and job.worker_id == "w1"
    assert storage.get("j").state is JobState.PROCESSING
    counts = storage.counts()
    assert counts[JobState.PENDING] == 0 and counts[JobState.PROCESSING] == 1


def test_update_moves_the_job_and_keeps_counts(storage):
    storage.register_owner("w1")
    storage.add(make(job_id="j"))
    job = storage.claim("w1", time.time())
    running = job.evolve(attempts=1)
    storage.update(job, running)
    done = running.evolve(state=JobState.COMPLETED, exit_code=0)
    storage.update(running, done)
    assert storage.get("j") == done
    assert [j.id for j in storage.jobs(JobState.COMPLETED)] == ["j"]
    counts = storage.counts()
    assert counts[JobState.COMPLETED] == 1 and counts[JobState.PROCESSING] == 0


def test_update_of_a_stale_copy_is_a_conflict(storage):
    storage.add(make(job_id="j"))
    stale = storage.get("j")
    storage.update(stale, stale.evolve(state=JobState.DEAD))
    with pytest.raises(ConflictError):
        storage.update(stale, stale.evolve(state=JobState.COMPLETED))
    assert storage.get("j").state is JobState.DEAD


def test_a_failed_job_waits_for_its_due_time(storage):
    storage.register_owner("w1")
    storage.add(make(job_id="j"))
    job = storage.claim("w1", time.time())
    storage.update(job, job.evolve(state=JobState.FAILED, attempts=1, due_at=time.time() + 30))
    assert storage.claim("w1", time.time()) is None
    assert storage.claim("w1", time.time() + 31).id == "j"


def test_jobs_lists_oldest_first_and_filters_by_state(storage):
    for i in range(5):
        storage.add(make(job_id=f"j{i}"))
    assert [j.id for j in storage.jobs()] == [f"j{i}" for i in range(5)]
    assert [j.id for j in storage.jobs(JobState.DEAD)] == []


def test_exactly_one_of_many_concurrent_claimers_wins(storage):
    storage.add(make(job_id="only"))
    barrier = threading.Barrier(8)
    won: list[str] = []

    def claimer(n: int) -> None:
        barrier.wait()
        job = storage.claim(f"w{n}", time.time())
        if job is not None:
            won.append(job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == ["only"]


def test_recover_hands_back_only_jobs_of_dead_owners(storage):
    storage.register_owner("alive")
    storage.register_owner("doomed")
    storage.add(make(job_id="a"))
    storage.add(make(job_id="b"))
    a = storage.claim("alive", time.time())
    storage.update(a, a.evolve(attempts=1, started_at="x"))
    b = storage.claim("doomed", time.time())
    storage.update(b, b.evolve(attempts=1, started_at="x"))
    storage.unregister_owner("doomed")  # what a crash does to a registration

    seen = []

    def decide(job: Job) -> Job:
        seen.append(job.id)
        assert job.state is JobState.PROCESSING and job.attempts == 1
        return job.evolve(state=JobState.PENDING, worker_id=None)

    recovered = storage.recover(decide)
    assert seen == ["b"] and [j.id for j in recovered] == ["b"]
    assert storage.get("b").state is JobState.PENDING
    assert storage.get("a").state is JobState.PROCESSING
    assert storage.recover(decide) == []


def test_a_held_result_is_recovered_as_completed_and_a_running_attempt_as_cut_short(storage):
    """`hold_result`: a worker that died after its job ended well, before writing the result,
    left a job that `recover` hands to `completed` (with the attempt and end it held), while the
    attempt it had started next goes to `decide`."""
    storage.register_owner("doomed")
    for job_id in ("a", "b"):
        storage.add(make(job_id=job_id))

    def start(job_id: str) -> Job:
        job = storage.claim("doomed", time.time())
        assert job.id == job_id
        started = job.evolve(attempts=1, started_at="2026-01-01T00:00:00.000Z")
        storage.update(job, started)
        return started

    a = start("a")
    if not storage.hold_result("doomed", a, 1767225601.5):
        pytest.skip("this backend holds no result: its workers record each one at once")
    start("b")
    storage.unregister_owner("doomed")  # what a crash does to a registration
    seen: dict[str, object] = {}

    def decide(job: Job) -> Job:
        seen[job.id] = "decide"
        return job.evolve(state=JobState.PENDING, worker_id=None)

    def completed(job: Job, finished: float) -> Job:
        seen[job.id] = ("completed", job.attempts, job.started_at, finished)
        return job.evolve(state=JobState.COMPLETED, finished_at="2026-01-01T00:00:01.500Z")

    recovered = storage.recover(decide, completed)
    assert seen == {"a": ("completed", 1, "2026-01-01T00:00:00.000Z", 1767225601.5), "b": "decide"}
    assert sorted((j.id, j.state) for j in recovered) == [("a", JobState.COMPLETED), ("b", JobState.PENDING)]
    assert storage.get("a").state is JobState.COMPLETED and storage.get("a").attempts == 1
    assert storage.recover(decide, completed) == []


def test_config_round_trips(storage):
    storage.save_config({"max_retries": 5})
    assert storage.load_config() == {"max_retries": 5}


def test_managers_are_listed_until_they_unregister(storage):
    info = ManagerInfo(id="m1", pid=123, workers=2, started_at=time.time())
    storage.register_manager(info)
    assert [m.id for m in storage.managers()] == ["m1"]
    storage.unregister_manager("m1")
    assert storage.managers() == []


def test_a_stop_request_reaches_only_managers_started_before_it(storage):
    before = time.time() - 1
    storage.request_stop()
    assert storage.stop_requested(before)
    assert not storage.stop_requested(time.time() + 1)


def test_delete_removes_a_job_and_its_id(storage):
    storage.add(make(job_id="gone"))
    storage.delete(storage.get("gone"))
    assert storage.get("gone") is None and storage.match_ids("gone") == []
    assert storage.counts()[JobState.PENDING] == 0
    storage.add(make(job_id="gone"))  # the id is free again


def test_delete_of_a_stale_copy_is_a_conflict(storage):
    storage.add(make(job_id="j"))
    stale = storage.get("j")
    storage.update(stale, stale.evolve(state=JobState.DEAD))
    with pytest.raises(ConflictError):
        storage.delete(stale)


def test_unique_keys_are_a_compare_and_set(storage):
    assert storage.unique_holder("k") is None
    assert storage.reserve_unique("k", "a", None)
    assert not storage.reserve_unique("k", "b", None)
    assert storage.unique_holder("k") == "a"
    assert storage.reserve_unique("k", "c", "a")
    assert storage.unique_holder("k") == "c"


def test_one_of_many_concurrent_unique_reservations_wins(storage):
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def reserve(n: int) -> None:
        barrier.wait()
        if storage.reserve_unique("key", f"job{n}", None):
            wins.append(f"job{n}")

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and storage.unique_holder("key") == wins[0]


def test_dependants_are_recorded(storage):
    assert storage.dependants("a") == []
    storage.add_dependant("a", "b")
    storage.add_dependant("a", "c")
    storage.add_dependant("a", "b")
    assert storage.dependants("a") == ["b", "c"]


def test_cancel_requests(storage):
    assert not storage.cancel_requested("j")
    storage.request_cancel("j")
    assert storage.cancel_requested("j")
    storage.clear_cancel("j")
    assert not storage.cancel_requested("j")


def test_start_slots_follow_the_rate(storage):
    now = time.time()
    assert storage.take_start_slot(0, now) == 0  # unlimited
    assert storage.take_start_slot(2, now) == 0
    wait = storage.take_start_slot(2, now)
    assert 0 < wait <= 0.5
    assert storage.take_start_slot(2, now + wait) == 0


def test_a_forced_stop_request_says_so(storage):
    before = time.time() - 1
    storage.request_stop(force=True)
    assert storage.stop_requested(before) == "force"


def test_metrics_follow_finished_attempts(storage):
    storage.register_owner("w1")
    storage.add(make(job_id="j"))
    job = storage.claim("w1", time.time())
    started = job.evolve(attempts=1, started_at=job.created_at)
    storage.update(job, started)
    entry = {"attempt": 1, "duration": 0.25, "exit_code": 0, "timed_out": False}
    storage.update(started, started.evolve(state=JobState.COMPLETED, history=[entry]))
    agg = storage.metrics()
    assert agg["attempts_total"] == 1 and agg["completed_total"] == 1
    assert agg["run_ms"]["count"] == 1 and agg["run_ms"]["max"] == 250


def test_page_returns_the_newest_window_oldest_first(storage):
    storage.register_owner("w1")
    for i in range(10):
        storage.add(make(job_id=f"j{i}"))
    job = storage.claim("w1", time.time())  # j0 moves to processing: order must not change
    storage.update(job, job.evolve(state=JobState.COMPLETED))
    total, jobs = storage.page(None, 3, 0)
    assert total == 10 and [j.id for j in jobs] == ["j7", "j8", "j9"]
    total, jobs = storage.page(None, 3, 8)
    assert [j.id for j in jobs] == ["j0", "j1"]
    assert storage.page(JobState.COMPLETED, 5, 0)[1][0].id == "j0"
    assert storage.page(JobState.DEAD, 5, 0) == (0, [])
