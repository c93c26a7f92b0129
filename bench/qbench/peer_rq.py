"""Run with bench/.peers-venv's python: rq SimpleWorkers drain N `true` jobs; prints JSON.

Usage: peer_rq.py --port PORT --jobs N --workers 1,2 --workdir DIR
The Redis server on PORT is the benchmark's own (never 6379). For each worker count W, the jobs
are enqueued first, then W `rq worker --burst` processes run until the queue is empty; the rate runs from the earliest
job start to the latest job end that rq recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

JOBS_MODULE = '''
import subprocess


def run_true():
    subprocess.run("true", shell=True, check=True)
'''
QUEUE = "bench"
EXIT_GRACE = 2.0


def connect(port: int):
    from redis import Redis
    redis = Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.ping()
            return redis
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def enqueue(redis, jobs: int) -> list[str]:
    import bench_peer_jobs
    from rq import Queue
    queue = Queue(QUEUE, connection=redis)
    datas = [Queue.prepare_data(bench_peer_jobs.run_true, result_ttl=3600) for _ in range(jobs)]
    return [job.id for job in queue.enqueue_many(datas)]


def all_done(redis, ids: list[str]) -> bool:
    """Whether every job finished: two cheap counts first, so that polling takes little from the
    workers, then each job's status."""
    from rq import Queue
    from rq.job import Job
    from rq.registry import StartedJobRegistry
    queue = Queue(QUEUE, connection=redis)
    if queue.count or StartedJobRegistry(queue=queue).get_job_count(cleanup=False):
        return False
    jobs = Job.fetch_many(ids, connection=redis)  # statuses included: no round trip per job below
    return all(j is not None and j.get_status(refresh=False) == "finished" for j in jobs)


def run_workers(redis, ids: list[str], port: int, workers: int, workdir: Path, timeout: float) -> None:
    """Runs burst workers until they exit, or until every job is done and EXIT_GRACE has passed:
    an rq 3.0 burst worker sometimes stays up about a minute after logging that it is quitting
    (seen here in about one run in three), which would only make the benchmark longer (jobs are
    timed from what rq recorded)."""
    rq = str(Path(sys.executable).parent / "rq")
    args = [rq, "worker", "--burst", "-w", "rq.worker.SimpleWorker", "-u", f"redis://127.0.0.1:{port}",
            "-P", str(workdir), QUEUE]
    env = dict(os.environ, PYTHONPATH=str(workdir))
    with open(workdir / "rq-workers.log", "ab") as log:
        procs = [subprocess.Popen(args, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
                 for _ in range(workers)]
        try:
            deadline = time.monotonic() + timeout
            done_at = None
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if done_at is None and all_done(redis, ids):
                    done_at = time.monotonic()
                if done_at is not None and time.monotonic() - done_at > EXIT_GRACE:
                    break
                time.sleep(0.25)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def window(redis, ids: list[str]) -> tuple[float, float]:
    from rq.job import Job
    jobs = Job.fetch_many(ids, connection=redis)
    unfinished = [j for j in jobs if j is None or j.get_status() != "finished"]
    if unfinished:
        raise SystemExit(f"{len(unfinished)} rq jobs did not finish")
    return (min(j.started_at.timestamp() for j in jobs), max(j.ended_at.timestamp() for j in jobs))


def drain(redis, port: int, jobs: int, workers: int, workdir: Path) -> float:
    """jobs/s of `workers` burst workers over `jobs` jobs enqueued first."""
    redis.flushdb()
    ids = enqueue(redis, jobs)
    run_workers(redis, ids, port, workers, workdir, timeout=60 + jobs / 10)
    first, last = window(redis, ids)
    return round(jobs / max(last - first, 1e-3), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    (args.workdir / "bench_peer_jobs.py").write_text(JOBS_MODULE)
    sys.path.insert(0, str(args.workdir))
    redis = connect(args.port)
    rates = {w: drain(redis, args.port, args.jobs, int(w), args.workdir) for w in args.workers.split(",")}
    print(json.dumps({"jobs": args.jobs, "jobs_per_s": rates}))


if __name__ == "__main__":
    main()
