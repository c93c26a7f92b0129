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
def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "raw,enqueue,drain",
                        "--jobs", "20", "--out", str(out)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())

    assert data["measurements"] == ["raw", "drain", "enqueue"]
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
        assert positive(drain["ratio_to_raw"])
    assert positive(results["enqueue"]["cli_ms"]["median_ms"])
    assert positive(results["enqueue"]["floor_ms"]["median_ms"])
    assert positive(results["enqueue"]["ratio_to_floor"])
    assert "drain" in data["table"] and "| what" in p.stdout
