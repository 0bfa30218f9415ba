"""Click types for the numbers users give: limits are validated where the options are parsed, so a
bad value ends in one line before anything is loaded, downloaded or started.

Rules: every number option has a type here or a `click.IntRange`; a float is finite (no `nan`,
no `inf`) and within its range; a size (`4GiB`) is read once, here; none of it needs torch.
"""

from __future__ import annotations

import math
import re

import click

from catalog.errors import BadOptionError

MAX_GPU_MEMORY = "--max-gpu-memory"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as 4GiB, 500MB or 2.5GB (decimal and binary units)."""
    match = SIZE.match(text)
    if not match or match.group(2).lower() not in UNITS:
        raise BadOptionError(MAX_GPU_MEMORY, f"cannot read {text!r} as a size; write e.g. 4GiB or 500MB.")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise BadOptionError(MAX_GPU_MEMORY, "must be more than zero.")
    return size


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that leaves at least 1 (1000 B, 1.5 MiB, 4.00 GiB)."""
    unit = next((u for u in ("TiB", "GiB", "MiB", "KiB") if size >= UNITS[u.lower()]), "B")
    return f"{size} B" if unit == "B" else f"{size / UNITS[unit.lower()]:.2f} {unit}"


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
