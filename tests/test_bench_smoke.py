"""The benchmark runs end to end: bench/run.py --quick on a few measurements writes sound JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_bench_quick_runs_and_writes_json_with_redis_beside(tmp_path):
    """One run of the benchmark for both: a second run cost 25 s of the suite's five minutes.
    `redis` runs drain, enqueue, bulk and pickup on a redis-server the bench starts itself."""
    from redis_server import unavailable

    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                        "--only", "raw,enqueue,drain,minimum,redis", "--jobs", "20", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())

    assert data["measurements"] == ["raw", "drain", "minimum", "enqueue", "redis"]
    assert data["errors"] == {}
    assert positive(data["machine"]["cpu_count"])
    assert data["machine"]["python"] and data["machine"]["queuectl_version"]
    results = data["results"]
    for workers in ("1", "2", "4"):
        assert positive(results["raw"][workers]["jobs_per_s"])
        assert positive(results["raw"][workers]["ms_per_spawn"])
        drain = results["drain"][workers]
        assert drain["jobs"] == 20
        assert positive(drain["jobs_per_s"])
        assert positive(drain["raw_jobs_per_s"])  # measured right before it
        assert drain["ratio_to_raw"] == round(drain["jobs_per_s"] / drain["raw_jobs_per_s"], 3)
    for processes in ("1", "2"):
        floor = results["minimum"][processes]
        assert floor["jobs"] == 20  # every job, once, whatever the number of loops
        assert positive(floor["jobs_per_s"]) and positive(floor["ratio_to_raw"])
    assert positive(results["enqueue"]["cli_ms"]["median_ms"])
    assert positive(results["enqueue"]["floor_ms"]["median_ms"])
    assert positive(results["enqueue"]["ratio_to_floor"])
    assert "drain" in data["table"] and "durable minimum / raw limit" in data["table"] and "| what" in p.stdout

    if unavailable() is not None:
        assert "redis" in data["not_run"]  # said so under the table, and the rest still ran
        from conftest import redis_unavailable
        redis_unavailable()  # a skip here, a failure where CI is set
    assert data["not_run"] == {}
    redis = results["redis"]
    assert redis["available"] is True and redis["server"] != "?"
    for workers in ("1", "2", "4"):
        assert redis["drain"][workers]["jobs"] == 20
        assert positive(redis["drain"][workers]["jobs_per_s"])
    assert positive(redis["enqueue"]["cli_ms"]["median_ms"])
    assert redis["bulk"]["jobs"] == 2000 and positive(redis["bulk"]["jobs_per_s"])
    assert redis["pickup"]["samples"] == 10 and redis["pickup"]["p50_ms"] >= 0  # half in a quick run; in ms
    lines = data["table"].splitlines()
    json_row = next(i for i, line in enumerate(lines) if line.startswith("| drain 20 "))
    assert lines[json_row + 1].startswith("| drain / raw limit")
    assert lines[json_row + 2].startswith("| Redis: drain 20 ")  # right below the JSON figures
    assert "Redis: `queuectl enqueue true`" in data["table"] and "Redis: pickup latency" in data["table"]
