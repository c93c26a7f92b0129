"""Raw limit: how fast this machine can run `sh -c true` from Python, at 1, 2 and 4 processes.

This is the ceiling for any queue that runs each job as a shell command: queuectl's drain rate
is reported as a fraction of it at the same concurrency.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

# Each looping process waits for a common start time, spawns for a fixed time, and reports.
LOOP = """
import json, subprocess, sys, time
start, seconds = float(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
t0 = time.perf_counter()
n = 0
while time.perf_counter() - t0 < seconds:
    subprocess.run(["sh", "-c", "true"])
    n += 1
print(json.dumps({"spawns": n, "seconds": time.perf_counter() - t0}))
"""


# Seconds of the raw loop measured right before each drain, by --quick.
PAIRED_RAW_S = {True: 0.25, False: 2.0}


def spawn_rate(concurrency: int, seconds: float, lead: float = 0.5) -> dict:
    """Spawns per second summed over `concurrency` looping processes, which start together
    `lead` seconds from now (time for every one to start)."""
    start = time.time() + lead
    procs = [subprocess.Popen([sys.executable, "-c", LOOP, str(start), str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(concurrency)]
    try:
        outs = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    spawns = sum(o["spawns"] for o in outs)
    elapsed = max(o["seconds"] for o in outs)
    rate = spawns / elapsed
    return {"jobs_per_s": round(rate, 1), "ms_per_spawn": round(1000 / rate * concurrency, 3),
            "spawns": spawns, "seconds": round(elapsed, 3)}


def measure(quick: bool, concurrencies: tuple[int, ...] = (1, 2, 4)) -> dict:
    """{"1": {...}, "2": {...}, "4": {...}}: jobs/s and ms per spawn (per process) at each level."""
    seconds = 0.5 if quick else 3.0
    return {str(c): spawn_rate(c, seconds) for c in concurrencies}


def limit_before(concurrency: int, quick: bool, measured: dict | None = None) -> float:
    """The raw limit to set a drain against, measured now, right before it: this machine's speed
    drifts by a third within minutes, and a ratio of figures taken minutes apart measured the
    drift as much. A quick run, a check that everything runs, takes the `raw` figure measured
    earlier when there is one (pairing every drain would cost it a sixth of its minute)."""
    if quick and measured and str(concurrency) in measured:
        return measured[str(concurrency)]["jobs_per_s"]
    return spawn_rate(concurrency, PAIRED_RAW_S[quick], lead=0.2 if quick else 0.5)["jobs_per_s"]
