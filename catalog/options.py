"""Click types for the numbers users give: limits are validated where the options are parsed, so a
bad value ends in one line before anything is loaded, downloaded or started.

Rules: every number option has a type here or a `click.IntRange`; a float is finite (no `nan`,
no `inf`) and within its range; a size (`4GiB`) is read once, here.
"""

from __future__ import annotations

import math

import click

from catalog.errors import BadOptionError
from catalog.streaming import parse_size


class FiniteFloat(click.FloatRange):
    """A finite float within an optional range (click's FloatRange lets `nan` through every bound)."""

    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class Size(click.ParamType):
    """A size such as 4GiB or 500MB, in bytes."""

    name = "size"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except BadOptionError as exc:
            self.fail(str(exc).removeprefix(f"{exc.option}: "), param, ctx)


def usage_line(exc: click.UsageError) -> str:
    """A usage error as one line; a bad option value as `--option: problem`, like our own errors."""
    if isinstance(exc, click.BadParameter) and isinstance(exc.param, click.Option):
        return f"{exc.param.opts[0]}: {exc.message}"
    hint = f"; `{exc.ctx.command_path} -h` lists the options." if exc.ctx else ""
    return exc.format_message().rstrip(".") + hint


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
