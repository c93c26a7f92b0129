"""Throw-away redis-server processes for the tests: a free loopback port and a temp directory each.

Never the system Redis (6379): every server here is started by the tests and stopped by them.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# Seconds a new server may take to answer PING.
START_TIMEOUT = 10.0


def unavailable() -> str | None:
    """Why the Redis tests cannot run here, or None when they can."""
    if shutil.which("redis-server") is None:
        return "no redis-server binary on PATH (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install -e '.[redis]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server; `restart` keeps its port and directory (so an AOF is replayed)."""

    def __init__(self, directory: Path, *extra: str, password: str | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"

    def start(self) -> None:
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log.read_text()[-2000:]}")
            try:
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT}s")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=5)

    def url(self, prefix: str | None = None, password: str | None = None, db: int = 0,
            lease: int | None = None) -> str:
        auth = f":{password}@" if password else ""
        options = [f"prefix={prefix}"] * bool(prefix) + [f"lease={lease}"] * bool(lease)
        return f"redis://{auth}127.0.0.1:{self.port}/{db}" + ("?" + "&".join(options) if options else "")

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
