"""Helpers shared by the fault-injection and load tests.

They look at the system the way an operator would: processes through /proc, the store through its
files, and the command through its exit code and output. Nothing here imports product code, so a
helper cannot hide a product bug.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

from conftest import Proc as Proc  # re-exported: the tests import everything from here
from conftest import queuectl_command as queuectl_command
from conftest import wait_for as wait_for

STATE_DIRS = ("pending", "processing", "completed", "failed", "dead")
STATUS_LABELS = {"Pending": "pending", "Processing": "processing", "Completed": "completed",
                 "Failed": "failed", "Dead (DLQ)": "dead"}
STATUS_LINE = re.compile(r"^(Pending|Processing|Completed|Failed|Dead \(DLQ\))\s+(\d+)\s*$", re.M)


# -- processes ---------------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process from /proc/PID/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of `pid`."""
    found = []
    for child in all_pids():
        st = proc_stat(child)
        if st is not None and st[1] == pid and st[0] != "Z":
            found.append(child)
    return found


def workers_of(pid: int) -> list[int]:
    """The worker processes of a `start` (multiprocessing spawn children)."""
    result = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    result.append(child)
        except OSError:
            pass
    return result


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None and st[2] == pgid and st[0] != "Z":
            found.append(pid)
    return found


def zombies_of(parents: set[int]) -> list[int]:
    found = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None and st[0] == "Z" and st[1] in parents:
            found.append(pid)
    return found


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident memory of a process (VmHWM), in KiB; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_of_store(data: Path) -> list[int]:
    """Every live process started for this store: `start`, its workers and the jobs they ran.

    They all carry QUEUECTL_STORAGE_PATH=<data> in their environment, and each test's data
    directory is unique, so this finds exactly what a test started and nothing else.
    """
    needle = f"QUEUECTL_STORAGE_PATH={data}\0".encode()
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        st = proc_stat(pid)
        if needle in env and st is not None and st[0] != "Z":
            found.append(pid)
    return found


def describe_processes(data: Path) -> str:
    """One line per live process of the store: pid, state, what it waits on, its command line.

    Printed when a run hangs, so the report shows where (a lock, a sync, a pipe) it was stuck.
    """
    lines = []
    for pid in processes_of_store(data):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read().strip()
            try:
                with open(f"/proc/{pid}/stack") as f:
                    stack = " < ".join(line.split()[-1].split("+")[0] for line in f.read().splitlines()[:4])
            except OSError:
                stack = "?"
        except OSError:
            continue
        st = proc_stat(pid)
        lines.append(f"{pid} {st[0] if st else '?'} ppid={st[1] if st else '?'} wchan={wchan} [{stack}] {cmd}")
    return "\n".join(lines) or "(no process of the store is alive)"


def wait_exit(p: subprocess.Popen, data: Path, timeout: float = 60) -> int:
    """The exit code of `p`; if it hangs, fails with what every process of the store waits on."""
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pid {p.pid} did not exit within {timeout}s:\n{describe_processes(data)}") from None


def kill_session(p: subprocess.Popen) -> None:
    """SIGKILLs a process started in its own session, with everything in its group."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def cleanup(data: Path, popens: list[subprocess.Popen]) -> None:
    """Ends every process a test started for `data`: the sessions it spawned, then stragglers."""
    for p in popens:
        if p.poll() is None:
            kill_session(p)
    for pid in processes_of_store(data):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def no_survivors(data: Path, timeout: float = 10) -> list[int]:
    """Waits for every process of the store to be gone; returns those still alive."""
    wait_for(lambda: not processes_of_store(data), timeout=timeout)
    return processes_of_store(data)


def spawn(proc, *args: str, name: str = "start", **kwargs) -> tuple[subprocess.Popen, Path]:
    """Starts `queuectl ARGS` in its own session with output in a log file; returns both."""
    log = proc.logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(queuectl_command() + list(args), cwd=proc.cwd, env=proc.env, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    return p, log


def registered(proc, starter: subprocess.Popen, timeout: float = 60) -> bool:
    """Waits until `status` lists the manager `starter` (or it has exited).

    `queuectl stop` only reaches managers that are registered when it is made, so a test must
    not ask a `start` to stop before this.
    """
    return wait_for(lambda: starter.poll() is not None
                    or f"Manager pid {starter.pid}:" in proc("status", check=False).stdout, timeout=timeout)


def run_until(proc, done, count: int = 2, timeout: float = 90) -> str:
    """Runs one `start --count N` until `done()` holds, stops it gracefully, returns its log."""
    starter, log = spawn(proc, "start", "--count", str(count))
    hung = ""
    try:
        assert registered(proc, starter), f"start never came up:\n{describe_processes(proc.data)}"
        finished = wait_for(done, timeout=timeout, interval=0.2)
        if not finished:
            hung = describe_processes(proc.data)
        proc("stop")
        try:
            code = starter.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
            hung += "\nafter `stop`:\n" + describe_processes(proc.data)
    finally:
        if starter.poll() is None:
            kill_session(starter)
    text = log.read_text(errors="replace")
    assert finished, f"the queue did not drain within {timeout}s:\n{hung}\n{text[-3000:]}"
    assert code == 0, f"start exited {code}:\n{hung}\n{text[-3000:]}"
    return text


# -- the store ---------------------------------------------------------------------------------
def folder_counts(data: Path) -> dict[str, int]:
    """Job files per state folder, as a `start` would count them (dot-files are temp files)."""
    counts = {}
    for state in STATE_DIRS:
        folder = data / state
        names = os.listdir(folder) if folder.is_dir() else []
        counts[state] = sum(1 for n in names if n.endswith(".json") and not n.startswith("."))
    return counts


def status_counts(stdout: str) -> dict[str, int]:
    """The per-state counts printed by `queuectl status`."""
    found = {STATUS_LABELS[label]: int(n) for label, n in STATUS_LINE.findall(stdout)}
    assert set(found) == set(STATE_DIRS), f"unexpected status output:\n{stdout}"
    return found


def unparseable_json(data: Path, skip: tuple[str, ...] = ("quarantine",)) -> list[str]:
    """Every *.json file of the store (temp files and `skip` folders aside) that does not parse."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(data):
        rel = os.path.relpath(dirpath, data)
        if rel.split(os.sep)[0] in skip:
            dirnames[:] = []
            continue
        for name in filenames:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError) as e:
                bad.append(f"{path}: {e}")
    return bad


def ids_in(data: Path, state: str) -> set[str]:
    """Ids of the jobs in one state folder now (files that move away meanwhile are skipped)."""
    found = set()
    for name in os.listdir(data / state):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            found.add(json.loads((data / state / name).read_bytes())["id"])
        except (OSError, ValueError, KeyError):
            continue
    return found


def jobs_on_disk(data: Path) -> dict[str, tuple[str, dict]]:
    """{id: (state folder, content)} for every job file of a store at rest (no worker running)."""
    found: dict[str, tuple[str, dict]] = {}
    for state in STATE_DIRS:
        folder = data / state
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            try:
                content = json.loads((folder / name).read_bytes())
            except (OSError, ValueError):
                continue
            assert content["id"] not in found, f"job {content['id']} is in two folders"
            found[content["id"]] = (state, content)
    return found


def stray_names(data: Path) -> list[str]:
    """Non-temp entries of the job folders that are not job files."""
    stray = []
    for state in STATE_DIRS:
        for name in os.listdir(data / state):
            if not name.startswith(".") and not (name.endswith(".json") and (data / state / name).is_file()):
                stray.append(f"{state}/{name}")
    return stray


def snapshot(data: Path, skip: tuple[str, ...] = ("logs", "owners", "managers", "tmp")) -> dict[str, bytes]:
    """The bytes of every regular file of the store outside `skip` (dot-files aside)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(data):
        rel = os.path.relpath(dirpath, data)
        if rel.split(os.sep)[0] in skip:
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".") or not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb") as f:
                snap[os.path.relpath(path, data)] = f.read()
    return snap


def marker_counts(path: Path) -> Counter:
    """How many times each job wrote its id into the marker file."""
    return Counter(path.read_text().split()) if path.exists() else Counter()


def one_error_line(stderr: str) -> str:
    """The single `Error: ...` line a failing command must print; fails on anything else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def jsonl(specs: list[dict]) -> str:
    return "".join(json.dumps(s) + "\n" for s in specs)


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
