"""Click parameter types that the commands share."""
from __future__ import annotations

from typing import Any

import click


class _AsciiDigits:
    """Refuses what int() reads but the settings do not: other scripts' digits ('٣' as 3) and
    underscores ('1_000')."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and (not value.isascii() or "_" in value):
            self.fail(f"{value!r} is not a valid integer.", param, ctx)  # type: ignore[attr-defined]
        return super().convert(value, param, ctx)  # type: ignore[misc]


class Integer(_AsciiDigits, click.types.IntParamType):
    """A whole number in ASCII digits."""


class Whole(_AsciiDigits, click.IntRange):
    """A whole number within bounds, in ASCII digits."""
