"""Loggers that import `logging` on first use.

Importing `logging` (with `traceback`, `string`, `threading`) costs a few milliseconds, a tenth of
a one-shot `queuectl enqueue`; most calls never log, so modules name their logger up front and
pay only when a message is actually emitted.
"""
from __future__ import annotations

import sys
from typing import Any


class LazyLogger:
    def __init__(self, name: str):
        self._name = name

    def debug(self, msg: str, *args: Any) -> None:
        # Without `logging` loaded nothing is configured, and the default level drops debug.
        if "logging" in sys.modules:
            self._logger().debug(msg, *args)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._logger(), attr)

    def _logger(self) -> Any:
        import logging

        return logging.getLogger(self._name)


def get_logger(name: str) -> LazyLogger:
    """A logger named `name` whose `logging` import waits until something is logged."""
    return LazyLogger(name)
