"""Run with bench/.peers-venv's python: a SqliteHuey consumer (thread workers) drains N `true` tasks.

Usage: peer_huey.py --jobs N --workers 1,2 --workdir DIR; prints JSON.
For each worker count W, the tasks are enqueued first, then `huey_consumer -k thread -w W` runs until every result is
stored. Huey records no start/end times, so each task returns its own (time around the
subprocess call); the rate runs from the earliest start to the latest end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TASKS_MODULE = '''
import os
import subprocess
import time

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"])


@huey.task()
def run_true():
    started = time.time()
    subprocess.run("true", shell=True, check=True)
    return started, time.time()
'''


def consume(workers: int, workdir: Path, huey, jobs: int, timeout: float) -> None:
    """Runs the consumer until `jobs` results are stored, then stops it (SIGINT: graceful)."""
    consumer = str(Path(sys.executable).parent / "huey_consumer")
    args = [consumer, "bench_peer_tasks.huey", "-k", "thread", "-w", str(workers), "-n"]
    env = dict(os.environ, PYTHONPATH=str(workdir))
    with open(workdir / "huey-consumer.log", "ab") as log:
        proc = subprocess.Popen(args, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while huey.result_count() < jobs:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"huey stored {huey.result_count()} of {jobs} results")
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def drain(tasks, jobs: int, workers: int, workdir: Path) -> float:
    """jobs/s of a consumer with `workers` threads over `jobs` tasks enqueued first."""
    tasks.huey.flush()
    results = [tasks.run_true() for _ in range(jobs)]
    consume(workers, workdir, tasks.huey, jobs, timeout=60 + jobs / 10)
    spans = [r.get() for r in results]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return round(jobs / max(last - first, 1e-3), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    os.environ["BENCH_HUEY_DB"] = str(args.workdir / "huey.db")
    (args.workdir / "bench_peer_tasks.py").write_text(TASKS_MODULE)
    sys.path.insert(0, str(args.workdir))
    import bench_peer_tasks
    rates = {w: drain(bench_peer_tasks, args.jobs, int(w), args.workdir) for w in args.workers.split(",")}
    print(json.dumps({"jobs": args.jobs, "jobs_per_s": rates}))


if __name__ == "__main__":
    main()
