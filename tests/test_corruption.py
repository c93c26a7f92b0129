"""Corrupt and stray files in the data directory, through the real command.

README: unreadable files (truncated, empty, not JSON, a stray name in a job folder) are logged
once and moved to quarantine/, never deleted; every other job keeps working; a corrupt
config.json is set aside the same way and the defaults apply.
"""
from __future__ import annotations

import json
import os

import pytest

from faultkit import (
    STATE_DIRS,
    cleanup,
    folder_counts,
    ids_in,
    jobs_on_disk,
    jsonl,
    marker_counts,
    run_until,
    unparseable_json,
)

GOOD = [f"g-{i}" for i in range(6)]


def _enqueue_good(proc, marker) -> bytes:
    """Stores the good jobs; returns the bytes of one valid job file, to corrupt copies of it."""
    proc("enqueue", "--file", "-", input=jsonl([{"id": j, "command": f"echo {j} >> {marker}"} for j in GOOD]))
    return next((proc.data / "pending").iterdir()).read_bytes()


def _quarantined(data) -> dict[str, bytes | None]:
    """{original name: content (None for a directory)} of everything in quarantine/."""
    found = {}
    for entry in (data / "quarantine").iterdir():
        original = entry.name.split("_", 2)[2]  # quarantine names are <time>_<random>_<original name>
        found[original] = None if entry.is_dir() else entry.read_bytes()
    return found


def _drain(proc, total: int) -> str:
    return run_until(proc, lambda: folder_counts(proc.data)["completed"] == total, count=2, timeout=60)


def test_unreadable_files_are_quarantined_once_and_every_other_job_runs(proc, tmp_path):
    marker = tmp_path / "marker"
    sample = _enqueue_good(proc, marker)
    bad = {
        "pending/0_1_1_truncated.json": sample[: len(sample) // 2],
        "pending/0_2_2_empty.json": b"",
        "pending/0_3_3_binary.json": b"\xff\xfe\x00\x01" + bytes(range(256)) * 2,
        "pending/0_4_4_array.json": b"[1, 2, 3]",
        "pending/notes.txt": b"a file someone left here\n",
        "failed/0_5_5_cut.json": sample[:20],
        "completed/cut-short.json": sample[:-5],
        "dead/zeros.json": b"\x00" * 64,
        "processing/worker-gone-1__lost.json": b'{"id": ',
        "config.json": b'{"max_retries": ',
    }
    for rel, content in bad.items():
        (proc.data / rel).write_bytes(content)
    (proc.data / "counts.json").write_bytes(b"not json at all")

    stderr = []
    try:
        for args in (["status"], ["list"], ["list", "--state", "pending"], ["dlq", "list"], ["config"]):
            p = proc(*args, check=False)
            assert p.returncode == 0, (args, p.stderr)
            stderr.append(p.stderr)
        assert "max_retries = 3" in proc("config").stdout, "a corrupt config means the defaults"
        proc("enqueue", json.dumps({"id": "g-new", "command": f"echo g-new >> {marker}"}))
        log = _drain(proc, len(GOOD) + 1)
    finally:
        cleanup(proc.data, [])
    stderr.append(log)

    for rel in bad:
        assert not (proc.data / rel).exists(), f"{rel} was left in place"
    kept = _quarantined(proc.data)
    for rel, content in bad.items():
        assert kept.get(os.path.basename(rel)) == content, f"{rel} was not kept intact in quarantine/"
    reports = [line for text in stderr for line in text.splitlines() if "Set aside" in line]
    for rel in bad:
        mentions = [line for line in reports if os.path.basename(rel) in line]
        assert len(mentions) == 1, (rel, mentions)

    seen = marker_counts(marker)
    assert set(seen) == {*GOOD, "g-new"} and set(seen.values()) == {1}
    assert unparseable_json(proc.data) == []
    proc("config", "set", "max_retries", "4")  # a fresh config can be written again
    assert "max_retries = 4" in proc("config").stdout


def test_stray_directories_and_files_in_job_folders_are_set_aside_by_start(proc, tmp_path):
    marker = tmp_path / "marker"
    _enqueue_good(proc, marker)
    for state in ("pending", "failed"):
        (proc.data / state / f"stray-dir-{state}").mkdir()
        (proc.data / state / f"stray-dir-{state}" / "inside.txt").write_text("keep me")
        (proc.data / state / f"stray-{state}.bin").write_bytes(b"\x01\x02")
    try:
        _drain(proc, len(GOOD))
    finally:
        cleanup(proc.data, [])
    kept = _quarantined(proc.data)
    for state in ("pending", "failed"):
        assert kept.get(f"stray-{state}.bin") == b"\x01\x02"
        assert f"stray-dir-{state}" in kept
        assert (proc.data / "quarantine").glob(f"*_stray-dir-{state}/inside.txt")
    assert set(marker_counts(marker)) == set(GOOD)
    assert proc("list").returncode == 0


@pytest.mark.parametrize("state", ["pending", "completed"])
def test_a_stray_directory_in_a_job_folder_does_not_break_list(proc, tmp_path, state):
    _enqueue_good(proc, tmp_path / "marker")
    (proc.data / state / "somedir").mkdir()
    p = proc("list", check=False)
    assert p.returncode == 0, p.stderr
    assert all(j[:8] in p.stdout for j in GOOD)


def test_strays_in_the_data_dir_root_are_harmless_and_left_alone(proc, tmp_path):
    marker = tmp_path / "marker"
    _enqueue_good(proc, marker)
    (proc.data / "my-notes").mkdir()
    (proc.data / "my-notes" / "todo.txt").write_text("remember the milk")
    (proc.data / "random.bin").write_bytes(os.urandom(1000))
    before = (proc.data / "random.bin").read_bytes()
    try:
        for args in (["status"], ["list"], ["dlq", "list"], ["config"]):
            assert proc(*args, check=False).returncode == 0, args
        _drain(proc, len(GOOD))
    finally:
        cleanup(proc.data, [])
    assert (proc.data / "my-notes" / "todo.txt").read_text() == "remember the milk"
    assert (proc.data / "random.bin").read_bytes() == before
    assert set(marker_counts(marker)) == set(GOOD)


def test_two_bad_files_with_the_same_name_are_both_kept(proc, tmp_path):
    marker = tmp_path / "marker"
    _enqueue_good(proc, marker)
    (proc.data / "pending" / "notes.txt").write_bytes(b"first")
    (proc.data / "failed" / "notes.txt").write_bytes(b"second")
    try:
        _drain(proc, len(GOOD))  # one claim sets both aside, microseconds apart
    finally:
        cleanup(proc.data, [])
    contents = sorted(p.read_bytes() for p in (proc.data / "quarantine").iterdir())
    assert contents == [b"first", b"second"], "a quarantined file was deleted"


def test_a_job_file_with_a_field_of_the_wrong_type_does_not_stop_the_queue(proc, tmp_path):
    marker = tmp_path / "marker"
    sample = _enqueue_good(proc, marker)
    poison = json.loads(sample)
    poison.update(id="poison", command="true", history="not a list", seq=0, priority=0, due_at=0)
    (proc.data / "pending" / "0_0_0_poison.json").write_text(json.dumps(poison))
    try:  # run until the good jobs are done, not for a set time a slow worker start can use up
        text = run_until(proc, lambda: ids_in(proc.data, "completed") >= set(GOOD), count=1, timeout=60)
    finally:
        cleanup(proc.data, [])
    assert "internal error" not in text, text[-2000:]
    assert set(marker_counts(marker)) == set(GOOD), "every other job keeps working"
    assert folder_counts(proc.data)["processing"] == 0
    for state in STATE_DIRS:
        assert jobs_on_disk(proc.data).get("poison", (None,))[0] != "processing", state
