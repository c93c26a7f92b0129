#!/usr/bin/env python3
"""The README's comprehensive verification: every feature through the real `queuectl` command.

Runs in a temporary data directory (never the user's), prints `Testing: NAME - PASS|FAIL` per
check, and `ALL FEATURES VERIFIED SUCCESSFULLY!` only when every check passed; exits 1 otherwise.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def queuectl_command() -> list[str]:
    exe = shutil.which("queuectl", path=os.path.dirname(sys.executable)) or shutil.which("queuectl")
    return [exe] if exe else [sys.executable, "-m", "queuectl"]


class Verifier:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL")}
        self.env["QUEUECTL_STORAGE_PATH"] = os.path.join(workdir, "queuectl_data")
        self.failures: list[str] = []
        self.ids: dict[str, str] = {}

    def q(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(queuectl_command() + list(args), cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def check(self, name: str, fn: Callable[[], bool]) -> None:
        try:
            ok = bool(fn())
        except Exception as e:  # a crash in a check is a failed check, reported on its line
            ok = False
            name = f"{name} ({type(e).__name__}: {e})"
        print(f"Testing: {name} - {'PASS' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failures.append(name)

    def count(self, label: str) -> int:
        m = re.search(r"^" + re.escape(label) + r"\s+(\d+)\s*$", self.q("status").stdout, re.M)
        return int(m.group(1)) if m else -1

    def enqueue(self, key: str, *args: str) -> bool:
        out = self.q("enqueue", *args)
        m = re.search(r"ID:\s*(\S+)", out.stdout)
        if out.returncode == 0 and m:
            self.ids[key] = m.group(1)
        return out.returncode == 0 and "Job enqueued successfully!" in out.stdout

    def state_of(self, key: str) -> str:
        out = self.q("list").stdout
        row = next((line for line in out.splitlines() if self.ids[key][:8] in line), "")
        return row.split()[-3] if row else ""

    def run(self) -> int:
        c = self.check
        c("help lists every command", lambda: all(
            w in self.q("--help").stdout for w in ("enqueue", "start", "stop", "status", "list", "dlq", "config")))
        c("enqueue a simple job", lambda: self.enqueue("hello", "echo 'Hello World'"))
        c("enqueue with --max-retries", lambda: self.enqueue("bad", "invalid_command", "--max-retries", "1"))
        c("enqueue a JSON job spec", lambda: self.enqueue("json", '{"id":"job1","command":"sleep 1","max_retries":3}'))
        c("enqueue multiple job types", lambda: self.enqueue("pipe", "echo a | tr a b > /dev/null")
          and self.enqueue("fail-once", "test -f flag || { touch flag; exit 1; }"))
        c("empty command is refused", lambda: self.q("enqueue", "  ").returncode == 2)
        c("duplicate id is refused", lambda: self.q("enqueue", '{"id":"job1","command":"true"}').returncode == 1)
        c("status counts pending jobs", lambda: self.count("Pending") == 5 and self.count("Total") == 5)
        c("list by state", lambda: "job1" in self.q("list", "--state", "pending").stdout)
        c("unknown state is a usage error", lambda: self.q("list", "--state", "nope").returncode == 2)
        c("config shows defaults", lambda: "max_retries = 3" in self.q("config").stdout)
        c("config set and get", lambda: "Set backoff_base = 1"
          in self.q("config", "--key", "backoff_base", "--value", "1").stdout
          and self.q("config", "get", "backoff-base").stdout.strip() == "1")
        c("invalid config value is refused", lambda: self.q("config", "set", "max_retries", "abc").returncode == 2)
        run = self.q("start", "--count", "2", "--timeout", "6")
        c("workers run and stop on time",
          lambda: run.returncode == 0 and "Started 2 worker(s) for 6 seconds" in run.stdout)
        c("successful jobs complete", lambda: all(self.state_of(k) == "completed" for k in ("hello", "json", "pipe")))
        c("a failed job is retried and succeeds", lambda: self.state_of("fail-once") == "completed")
        c("exhausted job lands in the DLQ", lambda: self.state_of("bad") == "dead"
          and self.ids["bad"] in self.q("dlq", "list").stdout)
        c("DLQ shows the last error", lambda: "not found" in self.q("dlq", "list").stdout)
        c("DLQ retry by prefix", lambda: f"Job {self.ids['bad']} moved from DLQ to pending queue"
          in self.q("dlq", "retry", self.ids["bad"][:8]).stdout)
        c("retried job is pending with attempts reset", lambda: re.search(
            r"invalid_command\s+pending\s+0\s+1\s*$",
            next(line for line in self.q("list").stdout.splitlines() if self.ids["bad"][:8] in line)))
        c("retrying a job that is not dead is an error", lambda: self.q("dlq", "retry", "job1").returncode == 1)
        c("jobs persist across a restart", lambda: self.count("Completed") == 4 and self.count("Pending") == 1)
        self.q("start", "--count", "1", "--timeout", "4")
        c("a restarted worker picks up the job again", lambda: self.state_of("bad") == "dead")
        c("no worker manager left running", lambda: "No worker manager running" in self.q("status").stdout)
        c("stop with nothing running", lambda: self.q("stop").returncode == 0)
        if self.failures:
            print(f"{len(self.failures)} check(s) FAILED: {', '.join(self.failures)}")
            return 1
        print("ALL FEATURES VERIFIED SUCCESSFULLY!")
        return 0


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="queuectl-verify-")
    try:
        started = time.monotonic()
        code = Verifier(workdir).run()
        print(f"({time.monotonic() - started:.1f}s)")
        return code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
