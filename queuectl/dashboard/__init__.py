"""The web dashboard (`queuectl dashboard`): pages and a JSON API over a QueueManager.

Flask and waitress are an optional extra (`pip install -e '.[dashboard]'`), so importing this
package loads neither; `create_app` imports Flask when it is called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.queue import QueueManager


def create_app(manager: QueueManager, token: str | None = None, read_only: bool = False,
               loopback_only: bool = False) -> Any:
    """The Flask application (see `app.create_app`)."""
    from .app import create_app as build
    return build(manager, token=token, read_only=read_only, loopback_only=loopback_only)
