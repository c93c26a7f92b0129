"""Shared fixtures: a backend per contract run, a CLI runner, and real `queuectl` processes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.utils import faults

ROOT = Path(__file__).resolve().parent.parent


# Modules whose `storage` tests also run on the JSON store with the Linux-only fast paths off.
FALLBACK_MODULES = {"test_storage_contract", "test_queue", "test_worker"}


def pytest_generate_tests(metafunc):
    if "storage" in metafunc.fixturenames:
        kinds = ["memory", "json", "redis"]
        if metafunc.module.__name__.rpartition(".")[2] in FALLBACK_MODULES:
            kinds.append("json-fallbacks")
        metafunc.parametrize("storage", kinds, indirect=True)


def without_linux_fast_paths(monkeypatch) -> None:
    """What a platform without syncfs, pidfd, FIFOs, select() on pipes or fork gets (Windows, say):
    CI runs on Linux, so the fallbacks run here with the fast paths switched off."""
    from queuectl.core import worker
    from queuectl.core.utils import fs, helper, proc

    monkeypatch.setattr(fs, "_SYNCFS", [None])
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    monkeypatch.setattr(proc, "_PIDFD_OPEN", None)
    monkeypatch.delattr(os, "mkfifo", raising=False)
    monkeypatch.setattr(worker, "SELECTABLE_PIPES", False)
    monkeypatch.setattr(proc, "POSIX_SPAWN", False)
    monkeypatch.setattr(helper, "FORK", False)


# The system's temp folder, read before `_temp_dir_of_the_run` moves it under pytest's own,
# which only root may enter: a store that a test runs as another user must lie outside it.
SYSTEM_TEMP = tempfile.gettempdir()


@pytest.fixture(autouse=True, scope="session")
def _temp_dir_of_the_run(tmp_path_factory):
    """The temp folders that queuectl makes itself (the memory backend's job output, the Redis
    backend's output folders, the logs of `start --detach`) go under pytest's own temp folder,
    which pytest prunes, in this process and in the `queuectl` processes the tests start; in the
    system's temp folder they were left behind by every run."""
    folder = str(tmp_path_factory.mktemp("tempdir"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = folder
    os.environ["TMPDIR"] = folder
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]


@pytest.fixture
def storage(request, tmp_path, monkeypatch):
    """Every storage backend in turn; the contract suite runs against each."""
    if request.param == "memory":
        store = get_storage(f"memory://{uuid.uuid4().hex}")
    elif request.param == "redis":  # a fresh key prefix per test on the session's server
        store = get_storage(request.getfixturevalue("redis_server").url(prefix=f"t-{uuid.uuid4().hex[:12]}"))
    else:
        if request.param == "json-fallbacks":
            without_linux_fast_paths(monkeypatch)
        store = get_storage(str(tmp_path / "data"))
    yield store
    store.close()


def redis_unavailable() -> None:
    """Skips a Redis test where Redis cannot run; fails it instead when CI is set."""
    from redis_server import unavailable
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the Redis tests must run", pytrace=False)
    pytest.skip(f"Redis tests skipped: {reason}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private redis-server per test session (never the system one), stopped at the end."""
    redis_unavailable()
    from redis_server import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_servers(redis_server, tmp_path):
    """Starts extra servers (with a password, with an AOF...) for one test; all stopped after it."""
    from redis_server import RedisServer
    started: list[RedisServer] = []

    def start(*extra: str, password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", *extra, password=password)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def json_store(tmp_path):
    store = get_storage(str(tmp_path / "data"))
    yield store
    store.close()


@pytest.fixture
def manager(storage):
    return QueueManager(storage)


def queuectl_command() -> list[str]:
    exe = shutil.which("queuectl", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "queuectl"]


class Proc:
    """Runs the real `queuectl` command against one data directory, from any working directory."""

    def __init__(self, tmp_path: Path):
        self.data = tmp_path / "data"
        self.cwd = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL")}
        self.env["QUEUECTL_STORAGE_PATH"] = str(self.data)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, cwd=None, input=None):
        p = subprocess.run(queuectl_command() + list(args), cwd=cwd or self.cwd, env=self.env,
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"queuectl {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def popen(self, *args: str, name: str = "start") -> subprocess.Popen:
        log = open(self.logs / f"{name}-{uuid.uuid4().hex[:6]}.log", "wb")
        return subprocess.Popen(queuectl_command() + list(args), cwd=self.cwd, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def enqueue(self, command: str, *extra: str) -> str:
        out = self("enqueue", command, *extra).stdout
        return out.split("ID:")[1].split()[0]

    def manager(self) -> QueueManager:
        return QueueManager(get_storage(str(self.data)))

    def counts(self) -> dict[str, int]:
        store = get_storage(str(self.data))
        return {s.value: n for s, n in store.counts().items()}


@pytest.fixture
def proc(tmp_path):
    return Proc(tmp_path)


def wait_for(predicate, timeout: float = 30, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def scratch(tmp_path):
    """A folder on a RAM filesystem where there is one: a SIGKILL leaves the page cache intact,
    so fsync plays no part in what these kills can break, and skipping the disk makes a kill
    cheap enough to afford thousands."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="queuectl-faults-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def unarmed():
    """This process forks the faulted children and checks their work: it never arms a point."""
    faults.arm(None)
    yield
    faults.arm(None)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running fault and load tests (run by `make test`)")


# The longest files first, busy ones beside ones that mostly wait, so that the processes of
# `make test` end together: xdist's own order (most tests first) put the longest file last, and
# the run took a minute longer. `make test` passes --no-loadscope-reorder to keep this order.
LONGEST_FIRST = ("test_fault_points.py", "test_chaos.py", "test_fault_points_cli.py", "test_redis.py",
                 "test_stop_and_limits.py", "test_load.py", "test_scheduling.py", "test_crash_writes.py",
                 "test_processes.py", "test_observability.py", "test_bench_smoke.py",
                 "test_disk_and_permissions.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep their order
