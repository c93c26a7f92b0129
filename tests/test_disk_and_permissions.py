"""A full disk and a data directory the user may not use, through the real command.

- Full disk (a 2 MB tmpfs as the data directory, filled up): `enqueue` fails with exit 1 and one
  error line saying so, nothing stored is damaged, and once space is freed everything works.
  Needs root to mount; skipped otherwise.
- Permissions: CI runs as root, where permission bits stop nothing, so the command is run as
  `nobody` (setpriv) against a root-owned 0700 store: one clear error line, exit 1, nothing
  changed. A world-writable store is refused. Skipped where setpriv or a Python that `nobody`
  can run is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from faultkit import (
    cleanup,
    folder_counts,
    jobs_on_disk,
    jsonl,
    marker_counts,
    one_error_line,
    run_until,
    snapshot,
    spawn,
    unparseable_json,
    wait_exit,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


# -- full disk -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(proc):
    """Mounts a 2 MB tmpfs (mode 0700) as the data directory; unmounts it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc.data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(proc.data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield proc.data
    finally:
        cleanup(proc.data, [])
        if subprocess.run(["umount", str(proc.data)], capture_output=True).returncode != 0:
            time.sleep(1)
            subprocess.run(["umount", "-l", str(proc.data)], capture_output=True)


def _fill(path: Path) -> None:
    """Writes zeros to `path` until the file system has not a byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)


REFUSED = ("full-1", "full-2", "full-3")


def _refused_writes(marker) -> list[tuple[list[str], str | None]]:
    return [
        (["enqueue", json.dumps({"id": "full-1", "command": f"echo full-1 >> {marker}"})], None),
        (["enqueue", "--file", "-"], jsonl([{"id": i, "command": "true"} for i in REFUSED[1:]])),
        (["enqueue", "echo plain"], None),
        (["config", "set", "max_retries", "4"], None),
    ]


def test_a_full_disk_fails_writes_cleanly_and_damages_nothing(proc, tiny_disk, tmp_path):
    marker = tmp_path / "marker"  # outside the small disk
    ids = [f"d-{i}" for i in range(5)]
    proc("enqueue", "--file", "-", input=jsonl([{"id": i, "command": f"echo {i} >> {marker}"} for i in ids]))
    proc("config", "set", "max_retries", "2")
    before = snapshot(tiny_disk)
    _fill(tiny_disk / "filler")

    for args, stdin in _refused_writes(marker):
        p = proc(*args, check=False, input=stdin)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert "no space left" in one_error_line(p.stderr).lower(), p.stderr

    after = snapshot(tiny_disk)
    assert {k: v for k, v in after.items() if k in before} == before, "a failed write changed a stored file"
    assert unparseable_json(tiny_disk) == []
    assert set(jobs_on_disk(tiny_disk)) == set(ids)
    listing = proc("list")
    assert all(i in listing.stdout for i in ids) and "full-" not in listing.stdout
    assert "max_retries = 2" in proc("config").stdout

    (tiny_disk / "filler").unlink()
    for job_id in ("after", *REFUSED):  # a refused id is free to use
        proc("enqueue", json.dumps({"id": job_id, "command": f"echo {job_id} >> {marker}"}))
    run_until(proc, lambda: folder_counts(tiny_disk)["completed"] == len(ids) + 4, count=1, timeout=60)
    seen = marker_counts(marker)
    assert set(seen) == {*ids, "after", *REFUSED} and set(seen.values()) == {1}


def test_a_full_disk_error_on_enqueue_names_the_store(proc, tiny_disk):
    proc.enqueue("true")
    _fill(tiny_disk / "filler")
    line = one_error_line(proc("enqueue", "echo x", check=False).stderr)
    assert line == f"Error: cannot write to '{tiny_disk}': no space left on device"


def test_a_write_refused_on_a_full_disk_leaves_nothing_behind(proc, tiny_disk, tmp_path):
    proc.enqueue("true")
    before = snapshot(tiny_disk)
    _fill(tiny_disk / "filler")
    for args, stdin in _refused_writes(tmp_path / "marker"):
        assert proc(*args, check=False, input=stdin).returncode == 1
    after = snapshot(tiny_disk)
    del after["filler"]
    assert after == before
    assert "no job" in one_error_line(proc("dlq", "retry", "full", check=False).stderr)


@pytest.mark.slow
def test_a_disk_that_fills_while_workers_run_loses_no_job(proc, tiny_disk, tmp_path):
    """Nothing in the README covers it, so the bar is the general promise: no job is lost, no
    file is damaged, and the queue finishes once space is back. Re-runs are at-least-once."""
    marker = tmp_path / "marker"
    ids = [f"f-{i:03d}" for i in range(150)]
    proc("enqueue", "--file", "-", input=jsonl([{"id": i, "command": f"echo {i} >> {marker}; sleep 0.02"}
                                                for i in ids]))
    starter, log = spawn(proc, "start", "--count", "2")
    try:
        assert wait_for(lambda: folder_counts(tiny_disk)["completed"] >= 20, timeout=60)
        _fill(tiny_disk / "filler")
        time.sleep(4)
        assert starter.poll() is None, "start gave up on a full disk"
        (tiny_disk / "filler").unlink()
        assert wait_for(lambda: folder_counts(tiny_disk)["completed"] == len(ids), timeout=90)
        proc("stop")
        assert wait_exit(starter, tiny_disk) == 0
    finally:
        cleanup(tiny_disk, [starter])
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert unparseable_json(tiny_disk) == []
    assert {s for s, _job in jobs_on_disk(tiny_disk).values()} == {"completed"}
    seen = marker_counts(marker)
    assert set(seen) == set(ids)
    print(f"{sum(n - 1 for n in seen.values())} jobs ran again after the disk filled; "
          f"{text.count('exited unexpectedly')} worker restarts")


# -- permissions ---------------------------------------------------------------------------------
def _as_nobody() -> list[str]:
    """A command line that runs `queuectl` as nobody, or a skip with the reason it cannot."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    drop = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    site = sysconfig.get_paths()["purelib"]
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for python in (sys.executable, shutil.which(f"python{want}") or "", "/usr/bin/python3"):
        if not python:
            continue
        probe = subprocess.run(drop + [python, "-c", "import sys, queuectl, click, filelock; "
                                                     "print('%d.%d' % sys.version_info[:2])"],
                               env={"PYTHONPATH": f"{ROOT}:{site}", "PATH": os.environ.get("PATH", "")},
                               capture_output=True, text=True, cwd="/")
        if probe.returncode == 0 and probe.stdout.strip() == want:
            return drop + [python, "-m", "queuectl"]
    pytest.skip(f"no Python {want} that nobody may run, with queuectl importable")


@pytest.fixture
def root_store(proc, tmp_path):
    """A store with a pending and a dead job, in a directory nobody can reach (0700, root's)."""
    from conftest import SYSTEM_TEMP

    base = Path(tempfile.mkdtemp(prefix="queuectl-perm-", dir=SYSTEM_TEMP))  # removed below
    base.chmod(0o755)
    data = base / "data"
    proc.env["QUEUECTL_STORAGE_PATH"] = str(data)
    proc.data = data
    try:
        marker = tmp_path / "marker"
        proc("enqueue", json.dumps({"id": "dead-1", "command": "exit 1", "max_retries": 0}))
        run_until(proc, lambda: folder_counts(data)["dead"] == 1, count=1)
        proc("enqueue", json.dumps({"id": "waiting", "command": f"echo waiting >> {marker}"}))
        assert (data.stat().st_mode & 0o777) == 0o700
        yield data, marker
    finally:
        cleanup(data, [])
        shutil.rmtree(base, ignore_errors=True)


NOBODY_COMMANDS = [
    pytest.param(["enqueue", "true"], id="enqueue"),
    pytest.param(["status"], id="status"),
    pytest.param(["list"], id="list"),
    pytest.param(["dlq", "list"], id="dlq-list"),
    pytest.param(["config"], id="config"),
    pytest.param(["config", "set", "max_retries", "2"], id="config-set"),
    pytest.param(["dlq", "retry", "dead-1"], id="dlq-retry"),
    pytest.param(["start", "--count", "1", "--timeout", "1"], id="start"),
    pytest.param(["stop"], id="stop"),
]


@pytest.mark.parametrize("args", NOBODY_COMMANDS)
def test_a_store_the_user_cannot_use_gives_one_clear_error(root_store, args):
    data, marker = root_store
    command = _as_nobody()
    before = snapshot(data)
    env = {"PATH": os.environ.get("PATH", ""), "QUEUECTL_STORAGE_PATH": str(data),
           "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
    p = subprocess.run(command + args, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    line = one_error_line(p.stderr)
    assert "permission denied" in line.lower() or "belongs to another user" in line, line
    assert snapshot(data) == before
    assert not marker.exists(), "a job ran"


WRITERS = [
    ["enqueue", "true"],
    ["config", "set", "max_retries", "2"],
    ["dlq", "retry", "dead-1"],
    ["start", "--count", "1", "--timeout", "1"],
]


@pytest.mark.parametrize("args", WRITERS, ids=lambda a: "-".join(a[:2]))
def test_a_world_writable_store_is_refused(proc, root_store, args):
    data, marker = root_store
    data.chmod(0o777)
    before = snapshot(data)
    p = proc(*args, check=False, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    line = one_error_line(p.stderr)
    assert "writable by others" in line and "chmod 700" in line, line
    assert snapshot(data) == before
    assert not marker.exists(), "a job from a store others can write to was run"


@pytest.mark.parametrize("args", [["start", "--count", "1", "--timeout", "1"], ["dlq", "retry", "dead-1"]],
                         ids=lambda a: "-".join(a[:2]))
def test_a_store_its_owner_cannot_write_gives_one_clear_error_and_nothing_before_it(root_store, args):
    """The user's own store, read-only to them (a 0500 folder): `start` says nothing of workers
    it never started, and no command names its internal owner ids."""
    import grp
    import pwd

    data, marker = root_store
    command = _as_nobody()
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    for folder, subfolders, files in os.walk(data):
        for name in subfolders + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)
        os.chmod(folder, 0o500)
    os.chown(data, uid, gid)
    try:
        before = snapshot(data)
        env = {"PATH": os.environ.get("PATH", ""), "QUEUECTL_STORAGE_PATH": str(data),
               "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
        p = subprocess.run(command + args, env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert p.stdout == "", p.stdout
        line = one_error_line(p.stderr)
        assert f"cannot write to '{data}'" in line and "permission denied" in line.lower(), line
        assert snapshot(data) == before
        assert not marker.exists(), "a job ran"
    finally:
        for folder, _subfolders, _files in os.walk(data):
            os.chmod(folder, 0o700)
