#!/usr/bin/env python3
"""queuectl's benchmark: every measurement in one run; prints a table and writes all figures as JSON.

    python bench/run.py [--quick] [--out bench/results/latest.json] [--only raw,drain] [--jobs N]

Measurements (names for --only): raw, drain, minimum, enqueue, bulk, pickup, redis, recovery,
peers, memory, scale; `redis` repeats drain, enqueue, bulk and pickup on the Redis backend, against
a redis-server it starts itself. Each drain (and the `minimum` loop, see qbench/minimum.py; not in
a --quick run unless named) is set beside the raw limit measured right before it (a --quick run
takes `raw`'s figures). The machine is small and shared: compare ratios within one run, not
figures across runs.
Peers (task-spooler, nq, rq, huey) run when installed; `bash bench/peers.sh` installs them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NAMES = ("raw", "drain", "minimum", "enqueue", "bulk", "pickup", "redis", "recovery", "peers", "memory", "scale")


def use_project_python() -> None:
    """Re-runs this script with the project's venv when queuectl is not importable here."""
    try:
        import queuectl  # noqa: F401
    except ImportError:
        venv = ROOT / ".venv"
        python = venv / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
            os.execv(str(python), [str(python), *sys.argv])
        sys.exit("queuectl is not importable: run `make install` first")


@dataclass
class Settings:
    quick: bool
    drain_jobs: int
    enqueue_repeat: int
    bulk_jobs: int
    pickup_samples: int
    recovery_runs: int
    scale_jobs: int
    scale_repeat: int
    memory_idle_s: float
    passes: int


def settings(args: argparse.Namespace) -> Settings:
    q = args.quick
    return Settings(
        quick=q,
        # --quick: 200 jobs and 12 calls kept it under a minute on the slowest instance seen
        # (300 and 20 took 88 s there, peers included).
        drain_jobs=args.jobs or (200 if q else 2000),
        enqueue_repeat=12 if q else 100,
        bulk_jobs=2000 if q else 10000,
        pickup_samples=20 if q else 100,
        recovery_runs=1 if q else 3,
        # --quick keeps under a minute on this disk, where writing and deleting 50,000 job files
        # alone took 5 to 17 s: hence 10,000, and a shorter idle time for the memory figure.
        scale_jobs=args.scale_jobs or (10_000 if q else 1_000_000),
        scale_repeat=5 if q else 20,
        memory_idle_s=1.0 if q else 3.0,
        # The machine is shared: raw, drain and peers run this many times, and report medians.
        passes=args.passes or (1 if q else 2),
    )


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; the whole run takes under 60 s")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json", help="JSON output file")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(NAMES)}")
    ap.add_argument("--jobs", type=int, default=0, help="jobs per drain (queuectl and peers)")
    ap.add_argument("--scale-jobs", type=int, default=0, help="completed jobs in the big store")
    ap.add_argument("--passes", type=int, default=0,
                    help="runs of raw, drain and peers, reported as medians (default 2, 1 with --quick)")
    args = ap.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(NAMES)
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        ap.error(f"unknown measurement(s): {', '.join(unknown)} (known: {', '.join(NAMES)})")
    if args.quick and not args.only:
        chosen.remove("minimum")  # a quick run checks queuectl in under a minute; --only minimum runs it
    args.names = [n for n in NAMES if n in chosen]
    return args


def git(*args: str) -> str:
    p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def queuectl_version() -> str:
    import queuectl
    return queuectl.__version__


def machine_info() -> dict:
    from qbench import peers
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "queuectl_version": queuectl_version(),
        "queuectl_commit": git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain") else ""),
        "load_average": list(os.getloadavg()),
        "peers_versions": peers.versions(),
    }


class Stores:
    """The big store (built once, for memory and scale) and fresh empty ones; removed at the end."""

    def __init__(self, stack: contextlib.ExitStack, s: Settings):
        from qbench.common import temp_dir
        self.scratch = stack.enter_context(temp_dir("stores"))
        self.s = s
        self._big: Optional[Path] = None
        self.build: dict = {}

    def big(self) -> Path:
        if self._big is None:
            from qbench import bigstore
            path = self.scratch / "big"
            self.build = bigstore.fill(path, self.s.scale_jobs)
            self._big = path
        return self._big

    def empty(self, tag: str) -> Path:
        path = self.scratch / f"empty-{tag}"
        if path.exists():
            raise RuntimeError(f"{path} is not new")
        return path


def runners(s: Settings, results: dict, stores: Stores) -> dict[str, Callable[[], dict]]:
    from qbench import drain, enqueue, memory, minimum, peers, pickup, raw, recovery, redisbench, scale
    return {
        "raw": lambda: median_of_passes(lambda: raw.measure(s.quick), s.passes),
        "drain": lambda: median_of_passes(lambda: drain.measure(s.drain_jobs, s.quick, results.get("raw")),
                                          s.passes),
        "minimum": lambda: median_of_passes(lambda: minimum.measure(s.drain_jobs, s.quick, results.get("raw")),
                                            s.passes),
        "enqueue": lambda: enqueue.single(s.enqueue_repeat),
        "bulk": lambda: enqueue.bulk(s.bulk_jobs),
        "pickup": lambda: pickup.measure(s.pickup_samples),
        # Quick: half the enqueue calls and pickup samples on Redis, where each costs 0.2 s.
        "redis": lambda: redisbench.measure(s.drain_jobs, s.enqueue_repeat // (2 if s.quick else 1), s.bulk_jobs,
                                            s.pickup_samples // (2 if s.quick else 1), s.quick, results.get("raw")),
        "recovery": lambda: recovery.measure(s.recovery_runs),
        "peers": lambda: median_of_passes(lambda: peers.measure(s.drain_jobs), s.passes),
        # memory first: scale's enqueue calls leave pending jobs in the big store
        "memory": lambda: memory.measure(stores.empty("memory"), stores.big(), stores.scratch, s.memory_idle_s),
        "scale": lambda: scale.measure(stores.empty("scale"), stores.big(), stores.scratch, stores.build,
                                       s.scale_repeat),
    }


def median_of_passes(measure: Callable[[], dict], passes: int) -> dict:
    """Runs `measure` `passes` times; every number becomes the median of its passes, and each
    jobs_per_s keeps the figures of all passes beside it."""
    runs = [measure() for _ in range(max(1, passes))]
    return runs[0] if len(runs) == 1 else _median_tree(runs)


def _median_tree(runs: list) -> object:
    import statistics

    first = runs[0]
    if isinstance(first, dict) and all(isinstance(r, dict) for r in runs):
        out = {}
        for key in first:
            values = [r.get(key) for r in runs]
            out[key] = _median_tree(values)
            if key == "jobs_per_s" and isinstance(out[key], float):
                out["passes"] = values
        return out
    if all(v == first for v in runs):
        return first  # a size, a label: the same in every pass
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in runs):
        return round(float(statistics.median(runs)), 3)
    return first


def run_all(names: list[str], s: Settings) -> tuple[dict, dict, dict]:
    """Runs each measurement in turn; one that fails is reported and the others still run."""
    results: dict = {}
    errors: dict = {}
    seconds: dict = {}
    with contextlib.ExitStack() as stack:
        stores = Stores(stack, s)
        todo = runners(s, results, stores)
        for name in names:
            print(f"-- {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = todo[name]()
            except Exception:
                errors[name] = traceback.format_exc(limit=6)
                print(errors[name], file=sys.stderr)
            seconds[name] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
    seconds["cleanup"] = round(time.perf_counter() - t0, 1)
    return results, errors, seconds


def not_run(results: dict, errors: dict) -> dict:
    """Everything that was asked for and has no figure, with the reason."""
    out = {f"peer {k}": v for k, v in results.get("peers", {}).get("not_run", {}).items()}
    for name in ("bulk", "redis"):
        if results.get(name, {}).get("available") is False:
            out[name] = results[name]["reason"]
    if results.get("redis", {}).get("bulk", {}).get("available") is False:
        out["redis bulk"] = results["redis"]["bulk"]["reason"]
    out.update({name: "failed: " + err.strip().splitlines()[-1] for name, err in errors.items()})
    return out


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl+C, so every `finally` runs; then no process is left."""
    from qbench.common import remove_deferred
    from qbench.procs import terminate_all

    def leave(signum, _frame):
        raise SystemExit(128 + signum)
    old = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        terminate_all()
        remove_deferred()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: Optional[list[str]] = None) -> int:
    use_project_python()
    sys.path.insert(0, str(BENCH))
    from qbench import report
    args = parse_args(argv)
    s = settings(args)
    started = time.perf_counter()
    with cleanup_on_signals():
        info = machine_info()
        results, errors, seconds = run_all(args.names, s)
    text = report.table(results, errors)
    out = {"machine": info, "settings": asdict(s), "measurements": args.names, "results": results,
           "not_run": not_run(results, errors), "errors": errors, "seconds": seconds,
           "total_seconds": round(time.perf_counter() - started, 1), "table": text}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(text)
    for name, why in out["not_run"].items():
        print(f"not run: {name}: {why}")
    print(f"\n{info['cpu_count']} CPUs, Python {info['python']}, queuectl {info['queuectl_version']} "
          f"({info['queuectl_commit']}), {out['total_seconds']} s; JSON: {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
