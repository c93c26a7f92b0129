"""Click parameter types that the commands share."""
from __future__ import annotations

from typing import Any

import click


def _ascii(value: Any, fail: Any) -> None:
    # int() also reads other scripts' digits ('٣' as 3) and underscores ('1_000'), which the
    # settings refuse
    if isinstance(value, str) and (not value.isascii() or "_" in value):
        fail(f"{value!r} is not a valid integer.")


class Integer(click.types.IntParamType):
    """A whole number in ASCII digits."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        _ascii(value, lambda msg: self.fail(msg, param, ctx))
        return super().convert(value, param, ctx)


class Whole(click.IntRange):
    """A whole number within bounds, in ASCII digits."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        _ascii(value, lambda msg: self.fail(msg, param, ctx))
        return super().convert(value, param, ctx)
