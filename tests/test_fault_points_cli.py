"""Crashes at named fault points, through the real CLI: each step of each write of each command,
killed in turn (the forked variant, and what the fault points are, is in test_fault_points.py;
the two are separate files so that `make test` runs them side by side).

`enqueue`, `enqueue --file`, `config set`, `dlq retry [--all]`, `cancel`, and a `start` whose
worker records a result, each killed at each point for N = 1, 2, ... until it gets through, on a
fresh copy of a small store; after each kill `status` and `list` work, what the command had
reported is stored, and the command run again (recovering a job a killed run left in
processing/ first) brings the store where it should be.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.utils import faults

from faultkit import group_members, jsonl, one_error_line, queuectl_command, wait_for
from test_fault_points import DEAD, PENDING, POINTS, _build_template, _clone, _parse, _ran_once_per_death, _view

CLI_PARALLEL = 3
CLI_KILLS_FLOOR = 60


@dataclass
class CliOp:
    name: str
    args: list[str]
    input: str | None = None
    template: str = "queue"


BATCH = [f"b-{i}" for i in range(5)]
CLI_OPS = [
    CliOp("enqueue", ["enqueue", json.dumps({"id": "new", "command": "true"})]),
    CliOp("enqueue --file", ["enqueue", "--file", "-"], jsonl([{"id": i, "command": "true"} for i in BATCH])),
    CliOp("config set", ["config", "set", "max_retries", "7"]),
    CliOp("dlq retry", ["dlq", "retry", DEAD[0]]),
    CliOp("dlq retry --all", ["dlq", "retry", "--all"]),
    CliOp("cancel", ["cancel", PENDING[0]]),
    CliOp("start", ["start", "--count", "1"], template="start"),
]
SMALL_DLQ = 4


def _stopping(job_id: str) -> str:
    """A job that marks itself, then stops the `start` that runs it (with no fault armed)."""
    return f"echo {job_id} >> marker; " + shlex.join(["env", "-u", faults.ENV, *queuectl_command(), "stop"])


def _cli_templates(root: Path) -> dict[str, Path]:
    """A small queue; a store holding just `work`, which stops the `start` that runs it."""
    start = root / "start"
    store = get_storage(str(start / "data"))
    try:
        manager = QueueManager(store)
        manager.set_config("poll_interval", "0.05")
        manager.enqueue(json.dumps({"id": "work", "command": _stopping("work")}))
    finally:
        store.close()
    return {"queue": _build_template(root / "queue", SMALL_DLQ, 2, work=False), "start": start}


class Cli:
    """Runs `queuectl` on one case's store (its folder is the working directory)."""

    def __init__(self, env: dict[str, str], path: Path):
        self.path = path
        self.env = {**env, "QUEUECTL_STORAGE_PATH": str(path / "data")}

    def __call__(self, *args: str, input: str | None = None, fault: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(self.env, **({faults.ENV: fault} if fault else {}))
        return subprocess.run(queuectl_command() + list(args), cwd=self.path, env=env, input=input,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, fault: str | None = None) -> subprocess.CompletedProcess:
        """`start --count 1` in its own session; its job stops it. A killed `start` leaves its
        worker to finish and exit by itself, then anything left of the session is ended."""
        env = dict(self.env, **({faults.ENV: fault} if fault else {}))
        p = subprocess.Popen(queuectl_command() + ["start", "--count", "1"], cwd=self.path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if not wait_for(lambda: not group_members(p.pid), timeout=10, interval=0.05):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _cli_expect(op: CliOp, run: subprocess.CompletedProcess, view: dict, data: Path) -> None:
    """What the killed command had reported must be stored."""
    if op.name == "enqueue" and "ID: new" in run.stdout:
        assert "new" in view
    if op.name == "enqueue --file" and 0 < len([i for i in BATCH if i in view]) < len(BATCH):
        assert any(n.startswith(".batch-") and n.endswith(".commit") for n in os.listdir(data / "tmp")), \
            "a batch is partly visible and not committed"
    if op.name == "enqueue --file":
        if "Enqueued" in run.stdout:
            assert all(i in view for i in BATCH)
    if op.name == "dlq retry" and "moved from DLQ" in run.stdout:
        assert view[DEAD[0]][0] == "pending"
    if op.name == "dlq retry --all" and "Moved" in run.stdout:
        assert all(view[i][0] == "pending" for i in DEAD[:SMALL_DLQ])
    if op.name == "cancel" and "cancelled" in run.stdout:
        assert view[PENDING[0]][0] == "dead"


def _cli_next(op: CliOp, cli: Cli, view: dict) -> int:
    """Runs the command again, as a user would; returns how many jobs it found stranded."""
    if op.name == "start":  # a job that stops it comes last, whatever the killed run left
        assert cli("enqueue", json.dumps({"id": "again", "command": _stopping("again")})).returncode == 0
        run = cli.start()
        assert run.returncode == 0, run.stderr[-2000:]
        return 0
    targets = {"dlq retry": DEAD[:1], "dlq retry --all": DEAD[:SMALL_DLQ], "cancel": PENDING[:1]}.get(op.name, [])
    stranded = sum(view[i][0] == "processing" for i in targets)
    run = cli(*op.args, input=op.input)  # a job a killed run left in processing/ is recovered first
    if run.returncode == 0:
        return stranded
    error = one_error_line(run.stderr)
    if op.name in ("enqueue", "enqueue --file"):
        stored = _view(cli.path / "data")  # the rerun moved on a batch the killed one committed
        assert "already exists" in error and all(i in stored for i in (["new"] if op.name == "enqueue" else BATCH))
        return 0
    state = view[targets[0]][0] if targets else None
    if state == "processing":  # recovering it finished the killed run's move: the error says so
        state = {"dlq retry": "pending", "cancel": "dead"}.get(op.name)
        assert state and (f"is {state}" in error or f"already {state}" in error), error
        return stranded
    assert (op.name, state) in {("dlq retry", "pending"), ("cancel", "dead")}, error
    return stranded


def _cli_final(op: CliOp, case: Path, view: dict, stranded: int) -> None:
    if op.name == "enqueue":
        assert view["new"][0] == "pending"
    elif op.name == "enqueue --file":
        assert all(view[i][0] == "pending" for i in BATCH)
    elif op.name == "config set":
        assert _parse(case / "data" / "config.json")["max_retries"] == 7
    elif op.name == "dlq retry":
        assert view[DEAD[0]][0] == "pending"
    elif op.name == "dlq retry --all":
        assert all(view[i][0] == "pending" for i in DEAD[:SMALL_DLQ])
    elif op.name == "cancel":
        assert view[PENDING[0]][0] == "dead"
    elif op.name == "start":
        assert not [i for i, (state, _) in view.items() if state == "processing"]
        _ran_once_per_death(view, case / "marker", "work")


def _cli_chain(op: CliOp, point: str, templates: dict[str, Path], root: Path, env: dict[str, str]) -> Counter:
    """Runs `op` killed at `point` for N = 1, 2, ... until it gets through, each on a fresh copy
    of its template; checks the store and the commands after each kill."""
    tally: Counter = Counter()
    for n in range(1, 1000):
        case = root / f"{op.name.replace(' ', '_')}-{point}-{n}"
        _clone(templates[op.template], case)
        cli = Cli(env, case)
        trip = case / "trip"
        fault = f"{point}:{n}:{trip}"
        run = cli.start(fault) if op.name == "start" else cli(*op.args, input=op.input, fault=fault)
        where = f"`{' '.join(op.args)}` killed at {point}:{n}"
        if not trip.exists():
            assert run.returncode == 0 and "Traceback" not in run.stderr, f"{where}:\n{run.stderr}"
            shutil.rmtree(case)
            return tally
        # in `start` the killed process may be the worker, and `start` then exits normally
        assert run.returncode == -signal.SIGKILL or (op.name == "start" and run.returncode == 0), \
            f"{where}: exit {run.returncode}\n{run.stderr}"
        tally["kills"] += 1
        tally[op.name] += 1
        view = _view(case / "data")
        for args in (["status"], ["list"]):
            shown = cli(*args)
            assert shown.returncode == 0 and shown.stderr == "", f"`{args[0]}` after {where}:\n{shown.stderr}"
        _cli_expect(op, run, view, case / "data")
        stranded = _cli_next(op, cli, view)
        tally["stranded"] += stranded
        view = _view(case / "data")
        _cli_final(op, case, view, stranded)
        shutil.rmtree(case)
    raise AssertionError(f"{op.name} still reaches {point} after 1000 runs")


@pytest.mark.slow
def test_cli_commands_killed_at_every_fault_point(proc, scratch, unarmed):
    began = time.monotonic()
    templates = _cli_templates(scratch)
    env = {k: v for k, v in proc.env.items() if k != "QUEUECTL_STORAGE_PATH"}
    root = scratch / "cases"
    root.mkdir()
    with ThreadPoolExecutor(CLI_PARALLEL) as pool:
        tallies = list(pool.map(lambda job: _cli_chain(job[0], job[1], templates, root, env),
                                [(op, point) for op in CLI_OPS for point in POINTS]))
    total = sum(tallies, Counter())
    print(f"CLI: {total['kills']} kills in {time.monotonic() - began:.1f}s "
          f"({ {op.name: total[op.name] for op in CLI_OPS} }); {total['stranded']} jobs stranded in "
          f"processing/ by a killed command until the next start")
    assert total["kills"] >= CLI_KILLS_FLOOR, f"only {total['kills']} kills"
    assert all(total[op.name] for op in CLI_OPS), "a command was never killed"
