"""The per-app state the views share: the manager, the guard, and one lock for changes."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import current_app, request

from ..core.queue import QueueManager
from .security import Guard


@dataclass
class Dashboard:
    manager: QueueManager
    guard: Guard
    # waitress serves on several threads; changes go one at a time (a backend may register an
    # owner on the first change, and the queue's rules re-read before they write anyway)
    lock: threading.Lock = field(default_factory=threading.Lock)


def current() -> Dashboard:
    dashboard: Dashboard = current_app.extensions["queuectl"]
    return dashboard


def wants_html() -> bool:
    """A page, or a browser's form post to the API, rather than a script's request (JSON)."""
    if not request.path.startswith("/api/"):
        return True
    if request.method in ("GET", "HEAD"):
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def local_path(value: str | None, default: str) -> str:
    """`value` if it is a path on this site (never another host, never a scheme), else `default`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    return default if parts.scheme or parts.netloc else value
