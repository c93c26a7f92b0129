"""Shared helpers: where things are, temp dirs that always go away, timing and statistics."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence, Union

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
PEERS_VENV = BENCH / ".peers-venv"
TEMP_PREFIX = "queuectl-bench-"

# Where queuectl keeps a queue: a JSON directory, or a redis:// URL (see redisbench.py).
Store = Union[Path, str]
# Makes a fresh, empty store for one measurement: (scratch folder, tag) -> a context that
# yields the store and removes what it leaves outside the scratch folder.
NewStore = Callable[[Path, str], ContextManager[Store]]


def queuectl_exe() -> str:
    """The `queuectl` script next to this interpreter (the project's venv), else on PATH."""
    here = Path(sys.executable).parent / "queuectl"
    if here.exists():
        return str(here)
    venv = ROOT / ".venv" / "bin" / "queuectl"
    if venv.exists():
        return str(venv)
    found = shutil.which("queuectl")
    if found:
        return found
    raise RuntimeError("queuectl is not installed (run `make install`)")


def clean_env(storage: Store | None = None) -> dict[str, str]:
    """This process's environment without QUEUECTL_* settings, optionally naming a store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL")}
    env["PYTHONUNBUFFERED"] = "1"
    # An installed tool runs from cached byte code (pip compiles it); without the cache every
    # call would also time the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if storage is not None:
        env["QUEUECTL_STORAGE_PATH"] = str(storage)
    return env


@contextlib.contextmanager
def json_store(scratch: Path, tag: str) -> Iterator[Path]:
    """A JSON store that does not exist yet, inside `scratch` (removed with it)."""
    yield scratch / f"data-{tag}"


# Folders whose removal waits for the end of the run (see `temp_dir`).
_DEFERRED: list[Path] = []


@contextlib.contextmanager
def temp_dir(tag: str, defer: bool = True) -> Iterator[Path]:
    """A private scratch folder (mode 0700, as queuectl requires), removed whatever happens.

    Removal waits until `remove_deferred` at the end of the run: on ext4 without a journal,
    creating a file skips every inode freed in the last minute (or six), one probe each, so deleting one
    measurement's thousands of files slowed the file creation of the next one several times
    over, which measured the benchmark's own cleanup rather than queuectl.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{tag}-"))
    try:
        yield path
    finally:
        if defer:
            _DEFERRED.append(path)
        else:
            remove_tree(path)


def remove_deferred() -> None:
    """Removes every scratch folder `temp_dir` kept for the end of the run."""
    while _DEFERRED:
        remove_tree(_DEFERRED.pop())


def remove_tree(path: Path) -> None:
    """Removes a folder: one `rm -rf` per subfolder at once (a big store has two huge ones)."""
    if not path.exists():
        return
    rm = shutil.which("rm")
    if rm:
        rms = [subprocess.Popen([rm, "-rf", "--", str(p)]) for p in _subfolders(path, depth=2)]
        for p in rms:
            p.wait()
        subprocess.run([rm, "-rf", "--", str(path)], check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _subfolders(path: Path, depth: int) -> list[Path]:
    """Folders `depth` levels below `path` (or less deep where a branch ends)."""
    level = [path]
    for _ in range(depth):
        below = [c for p in level for c in p.iterdir() if c.is_dir() and not c.is_symlink()]
        if not below:
            break
        level = below
    return level if level != [path] else []


def run_cli(args: Sequence[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a command to completion; raises with its output if it fails."""
    p = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return p


def time_call(fn: Callable[[], object]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median (and spread) of `repeat` timed calls, in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = [time_call(fn) * 1000 for _ in range(repeat)]
    return {"median_ms": round(statistics.median(samples), 4), "min_ms": round(min(samples), 4),
            "max_ms": round(max(samples), 4), "runs": repeat}


def paired_median_ms(fns: Sequence[Callable[[], object]], repeat: int, warmup: int = 1) -> list[dict[str, float]]:
    """median_ms of each function, their calls taken in turn: this machine's speed drifts by
    tens of percent within minutes, and two series timed one after the other drift apart (the
    same build measured 1.37 to 1.98 times its floor in three runs that way)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, samples):
            out.append(time_call(fn) * 1000)
    return [{"median_ms": round(statistics.median(s), 4), "min_ms": round(min(s), 4),
             "max_ms": round(max(s), 4), "runs": repeat} for s in samples]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a p95 of 20 samples is the 19th)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def parse_iso(text: str) -> float:
    """Epoch seconds of queuectl's ISO-8601 UTC stamps ('...T09:06:28.123Z')."""
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01,
               what: str = "condition") -> None:
    """Polls `predicate` until true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if not predicate():
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either side is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)
