"""The Redis backend beside the JSON store: drain at 1, 2 and 4 workers, one `enqueue` call, bulk
enqueue and pickup latency, by the same code and at the same sizes as the JSON figures.

One private redis-server (the one the rq peer uses: peers.redis_server, a free loopback port,
persistence off) serves every measurement, each under a fresh key prefix, so each starts from an
empty queue as a fresh JSON directory does. With persistence off Redis never touches the disk:
the figures show queuectl's Redis path against a JSON store that fsyncs every change.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

from . import drain, enqueue, pickup
from .common import NewStore, remove_tree, temp_dir
from .peers import redis_server


def unavailable() -> str | None:
    """Why the Redis figures cannot be measured here, or None when they can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed in queuectl's venv (pip install -e '.[redis]')"
    return None


def server_version() -> str:
    """`redis-server --version`'s v=X.Y.Z, or '?'."""
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


def store_maker(port: int) -> NewStore:
    """Fresh stores on the server at `port`: a new key prefix each."""
    @contextlib.contextmanager
    def new_store(_scratch: Path, tag: str) -> Iterator[str]:
        url = f"redis://127.0.0.1:{port}/0?prefix=bench-{tag}-{uuid.uuid4().hex[:8]}"
        try:
            yield url
        finally:
            remove_output(url)
    return new_store


def remove_output(url: str) -> None:
    """Attempt output of a Redis store stays on this host, in a temp folder of its own: removed
    with the store, as a JSON store's output goes with its directory."""
    from queuectl.core.storage import get_storage
    storage = get_storage(url)
    try:
        out_file, _err_file = storage.output_paths("any", 1)
    finally:
        storage.close()
    remove_tree(Path(out_file).parent)


def measure(drain_jobs: int, enqueue_repeat: int, bulk_jobs: int, pickup_samples: int,
            quick: bool = False, raw: dict | None = None) -> dict:
    """{"available": True, "server": version, "drain": ..., "enqueue": ..., "bulk": ..., "pickup": ...},
    each shaped as the JSON measurement of the same name; {"available": False, "reason": ...}
    when Redis cannot run here."""
    why = unavailable()
    if why:
        return {"available": False, "reason": why}
    with temp_dir("redis") as tmp, redis_server(tmp) as port:
        new_store = store_maker(port)
        return {
            "available": True,
            "server": server_version(),
            "drain": drain.measure(drain_jobs, quick, raw, new_store=new_store),
            "enqueue": enqueue.single(enqueue_repeat, new_store=new_store, floor=False),
            "bulk": enqueue.bulk(bulk_jobs, new_store=new_store, floor=False),
            "pickup": pickup.measure(pickup_samples, new_store=new_store),
        }
