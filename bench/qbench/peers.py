"""Peers: task-spooler, nq, rq and huey drain the same N `true` jobs at 1 and 2 workers.

Every job is `sh -c true` (queuectl runs commands through the shell, so the peers do too).
task-spooler and nq record no sub-second times, so they are timed on the wall clock: the jobs
wait behind a gate (one blocker job per worker that ends when a file appears), and the time
runs from opening the gate until the queue reports every job done. task-spooler keeps one
client process and connection per queued job and refuses more than about 1,000, so it drains
in batches of at most TSP_BATCH, and the batch times are added. nq runs one job at a time per
queue directory, so "2 workers" is two queue directories with half the jobs each.
rq and huey run in bench/.peers-venv (see bench/peers.sh) through peer_rq.py and peer_huey.py,
which time the jobs from what was recorded, as for queuectl.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .common import PEERS_VENV, temp_dir
from .procs import background

HERE = Path(__file__).resolve().parent
JOB = ["sh", "-c", "true"]
TSP_BATCH = 900
WORKER_COUNTS = (1, 2)
WORKERS_ARG = ",".join(map(str, WORKER_COUNTS))


class NotRun(Exception):
    """A peer that is not installed or cannot run here; the message says why."""


def blocker(gate: Path) -> list[str]:
    return ["sh", "-c", f"while [ ! -e '{gate}' ]; do sleep 0.005; done"]


def kill_by_env(name: str, value: str) -> None:
    """Ends every process whose environment has name=value (what a peer left behind)."""
    needle = f"{name}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue


# -- task-spooler --------------------------------------------------------------------------
def tsp_exe() -> str:
    for name in ("tsp", "ts"):  # Debian names it tsp; `ts` may be moreutils' timestamper
        exe = shutil.which(name)
        if exe and "task spooler" in _output([exe, "-V"]).lower():
            return exe
    raise NotRun("task-spooler is not installed (apt-get install task-spooler)")


def _output(args: list[str], env: dict[str, str] | None = None) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout + p.stderr


def tsp_batch(exe: str, env: dict[str, str], tmp: Path, slots: int, jobs: int, first_id: int) -> float:
    """Queues `jobs` behind one blocker per slot, opens the gate, returns seconds to drain them."""
    gate = tmp / f"gate-{first_id}"
    for _ in range(slots):
        subprocess.run([exe, "-n", *blocker(gate)], env=env, check=True)
    for _ in range(jobs):
        subprocess.run([exe, "-n", *JOB], env=env, check=True)
    last_id = first_id + slots + jobs - 1
    t0 = time.perf_counter()
    gate.touch()
    subprocess.run([exe, "-w", str(last_id)], env=env, capture_output=True, timeout=600)
    while any(w in _output([exe], env) for w in ("running", "queued")):
        time.sleep(0.005)
    return time.perf_counter() - t0


def tsp_drain(jobs: int, slots: int) -> float:
    exe = tsp_exe()
    with temp_dir(f"tsp{slots}") as tmp:
        env = dict(os.environ, TS_SOCKET=str(tmp / "socket"), TMPDIR=str(tmp),
                   TS_MAXFINISHED=str(jobs + 1000), TS_SLOTS=str(slots))
        try:
            subprocess.run([exe, "-S", str(slots)], env=env, check=True, capture_output=True)
            seconds, next_id, left = 0.0, 0, jobs
            while left:
                batch = min(left, TSP_BATCH)
                seconds += tsp_batch(exe, env, tmp, slots, batch, next_id)
                next_id, left = next_id + slots + batch, left - batch
        finally:
            for gate in tmp.glob("gate-*"):
                gate.touch()
            subprocess.run([exe, "-K"], env=env, capture_output=True, timeout=30)
            kill_by_env("TS_SOCKET", env["TS_SOCKET"])
    return jobs / seconds


# -- nq --------------------------------------------------------------------------------------
def nq_drain(jobs: int, queues: int) -> float:
    exe = shutil.which("nq")
    if not exe:
        raise NotRun("nq is not installed (apt-get install nq)")
    with temp_dir(f"nq{queues}") as tmp:
        gate = tmp / "gate"
        dirs = [tmp / f"q{i}" for i in range(queues)]
        envs = [dict(os.environ, NQDIR=str(d)) for d in dirs]
        try:
            for env in envs:
                subprocess.run([exe, "-q", *blocker(gate)], env=env, check=True)
            for i in range(jobs):
                subprocess.run([exe, "-q", *JOB], env=envs[i % queues], check=True)
            t0 = time.perf_counter()
            gate.touch()
            for env in envs:
                subprocess.run([exe, "-w"], env=env, check=True, timeout=1200)
            seconds = time.perf_counter() - t0
        finally:
            gate.touch()
            for d in dirs:
                kill_by_env("NQDIR", str(d))
    return jobs / seconds


# -- rq and huey (in the peers venv) ------------------------------------------------------------
def peers_python(module: str) -> str:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        raise NotRun(f"{PEERS_VENV} does not exist (run bench/peers.sh)")
    if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode != 0:
        raise NotRun(f"{module} is not installed in {PEERS_VENV} (run bench/peers.sh)")
    return str(python)


def run_driver(python: str, script: str, args: list[str], timeout: float) -> dict:
    p = subprocess.run([python, str(HERE / script), *args], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{script} exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(tmp: Path):
    """A private redis-server on a free loopback port, keeping nothing on disk."""
    exe = shutil.which("redis-server")
    if not exe:
        raise NotRun("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    if port == 6379:
        raise RuntimeError("refusing to use port 6379")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp), "--daemonize", "no"]
    with background(args, dict(os.environ), tmp / "redis.log"):
        yield port


def rq_drains(jobs: int) -> dict[str, float]:
    python = peers_python("rq")
    with temp_dir("rq") as tmp, redis_server(tmp) as port:
        args = ["--port", str(port), "--jobs", str(jobs), "--workers", WORKERS_ARG, "--workdir", str(tmp)]
        return run_driver(python, "peer_rq.py", args, timeout=120 + jobs / 2)["jobs_per_s"]


def huey_drains(jobs: int) -> dict[str, float]:
    python = peers_python("huey")
    with temp_dir("huey") as tmp:
        args = ["--jobs", str(jobs), "--workers", WORKERS_ARG, "--workdir", str(tmp)]
        return run_driver(python, "peer_huey.py", args, timeout=120 + jobs / 2)["jobs_per_s"]


# -- all of them ---------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """Installed versions of the peers (Debian packages and the peers venv)."""
    found = {}
    for pkg in ("task-spooler", "nq", "redis-server"):
        v = _output(["dpkg-query", "-W", "-f", "${Version}", pkg]).strip()
        if v and "no packages" not in v.lower():
            found[pkg] = v
    python = PEERS_VENV / "bin" / "python"
    for module in ("rq", "huey", "redis"):
        if python.exists():
            v = _output([str(python), "-c", f"import {module}; print({module}.__version__)"]).strip()
            if v and "Error" not in v:
                found[f"{module} (pypi)"] = v
    return found


PEERS = {
    "task-spooler": lambda jobs: {str(w): round(tsp_drain(jobs, w), 1) for w in WORKER_COUNTS},
    "nq": lambda jobs: {str(w): round(nq_drain(jobs, w), 1) for w in WORKER_COUNTS},
    "rq": rq_drains,
    "huey": huey_drains,
}


def measure(jobs: int) -> dict:
    """{"jobs": N, "ran": {peer: {"1": jobs/s, "2": jobs/s}}, "not_run": {peer: reason}}."""
    ran, not_run = {}, {}
    for name, drain in PEERS.items():
        try:
            ran[name] = drain(jobs)
        except NotRun as e:
            not_run[name] = str(e)
        except Exception as e:  # a peer that breaks is reported, and the others still run
            not_run[name] = f"failed: {type(e).__name__}: {e}"
    return {"jobs": jobs, "ran": ran, "not_run": not_run, "versions": versions()}
