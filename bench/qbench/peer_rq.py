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


def run_workers(port: int, workers: int, workdir: Path, timeout: float) -> None:
    rq = str(Path(sys.executable).parent / "rq")
    args = [rq, "worker", "--burst", "-w", "rq.worker.SimpleWorker", "-u", f"redis://127.0.0.1:{port}",
            "-P", str(workdir), QUEUE]
    env = dict(os.environ, PYTHONPATH=str(workdir))
    with open(workdir / "rq-workers.log", "ab") as log:
        procs = [subprocess.Popen(args, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
                 for _ in range(workers)]
        try:
            for p in procs:
                p.wait(timeout=timeout)
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
    run_workers(port, workers, workdir, timeout=60 + jobs / 10)
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
