"""Write a restore file's full-precision scalars back into a (de)quantized safetensors checkpoint
(`superweights apply-restore`): the paper's "hold the super weights out" for tools that quantize
whole tensors (Yu et al. 2024, Sec. 4.2).

A tensor's data is row-major at the offset its header gives (`catalog.safetensors_header`). A scalar
is written by overwriting its bytes in a copy of the file: no tensor is loaded (nor torch). Everything is
checked before anything is written (each tensor by name, shape and dtype, each index within its
shape); the output is built next to `--out` and moved into place whole; the input is only read.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import BadOptionError, RestoreError, UnwritableOutputError
from catalog.keeplist import RESTORE_FORMAT, RESTORE_VERSION
from catalog.safetensors_header import flat_index, read_header
from catalog.sources import checkpoint_shards


def _bf16(value: float) -> bytes:
    """bfloat16 is float32's upper half; rounded to nearest, ties to even."""
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return struct.pack("<H", (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


ENCODERS = {"F64": lambda v: struct.pack("<d", v), "F32": lambda v: struct.pack("<f", v),
            "F16": lambda v: struct.pack("<e", v), "BF16": _bf16}
WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class Scalar:
    """One full-precision weight of a restore file: tensor `param` of `shape`, at `index` as stored."""

    param: str
    shape: tuple[int, ...]
    index: tuple[int, ...]
    value: float


@dataclass(frozen=True)
class Stored:
    """Where a checkpoint keeps one tensor: its file, dtype, shape and the offset of its first byte."""

    file: str  # the file's name within the checkpoint directory
    dtype: str
    shape: tuple[int, ...]
    start: int


@dataclass(frozen=True)
class Write:
    """The bytes of one scalar, at their offset in one file of the copy."""

    file: str
    offset: int
    data: bytes


def read_restore(path: Path) -> list[Scalar]:
    """The scalars of a restore file (`export --keep-list restore`), each checked for shape and index."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RestoreError(path, f"cannot read it as a restore file ({getattr(exc, 'strerror', None) or exc}); "
                                 "write one with `superweights export --keep-list restore MODEL`.") from exc
    if not isinstance(document, dict) or document.get("format") != RESTORE_FORMAT or document.get("version") != RESTORE_VERSION:
        raise RestoreError(path, f"not a {RESTORE_FORMAT} file of version {RESTORE_VERSION}; "
                                 "write one with `superweights export --keep-list restore MODEL`.")
    return [_scalar(path, item) for item in document.get("scalars", [])]


def _scalar(path: Path, item: object) -> Scalar:
    try:
        scalar = Scalar(str(item["param"]), tuple(map(int, item["tensor_shape"])), tuple(map(int, item["tensor_index"])),
                        float(item["value"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RestoreError(path, f"a scalar lacks param, tensor_shape, tensor_index or value ({exc!r}).") from exc
    if len(scalar.index) != len(scalar.shape) or not all(0 <= i < n for i, n in zip(scalar.index, scalar.shape)):
        raise RestoreError(path, f"{scalar.param}: index {list(scalar.index)} lies outside its shape {list(scalar.shape)}.")
    if not math.isfinite(scalar.value):
        raise RestoreError(path, f"{scalar.param}: value {scalar.value} is not a finite number.")
    return scalar


def stored_tensors(checkpoint: Path) -> dict[str, Stored]:
    """Every tensor of the checkpoint's safetensors files (those transformers loads), from their headers."""
    try:
        files = checkpoint_shards(Path(checkpoint))
    except ValueError as exc:  # a broken or hostile index
        raise RestoreError(checkpoint, f"{exc}.") from exc
    if not files:
        raise RestoreError(checkpoint, "holds no .safetensors file; give a safetensors checkpoint directory.")
    tensors: dict[str, Stored] = {}
    for file in files:
        for name, stored in _header(file).items():
            if name in tensors:
                raise RestoreError(checkpoint, f"tensor {name} is in both {tensors[name].file} and {file.name}.")
            tensors[name] = stored
    return tensors


def _header(file: Path) -> dict[str, Stored]:
    try:
        entries = read_header(file)
    except (OSError, ValueError) as exc:
        raise RestoreError(file, f"not a readable safetensors file ({exc}).") from exc
    return {name: Stored(file.name, entry.dtype, entry.shape, entry.start) for name, entry in entries.items()}


def planned(scalar: Scalar, tensors: dict[str, Stored], checkpoint: Path) -> Write:
    """The bytes that write `scalar` into its tensor; refuses a tensor of another name, shape or dtype."""
    stored = tensors.get(scalar.param)
    if stored is None:
        raise RestoreError(checkpoint, f"has no tensor {scalar.param}; is it a checkpoint of the model the restore file is of?")
    if stored.shape != scalar.shape:
        raise RestoreError(checkpoint, f"tensor {scalar.param} is {list(stored.shape)}, the restore file's is {list(scalar.shape)} "
                                       "(another model, or another layout of it).")
    if stored.dtype not in ENCODERS:
        raise RestoreError(checkpoint, f"tensor {scalar.param} is stored as {stored.dtype} (packed, not dequantized); apply-restore "
                                       f"writes into a dequantized checkpoint ({', '.join(ENCODERS)}).")
    flat = flat_index(scalar.index, stored.shape)
    try:
        data = ENCODERS[stored.dtype](scalar.value)
    except (OverflowError, struct.error) as exc:
        raise RestoreError(checkpoint, f"{scalar.param}: {scalar.value} does not fit its dtype {stored.dtype}.") from exc
    return Write(stored.file, stored.start + flat * WIDTH[stored.dtype], data)


def apply_restore(restore: Path, checkpoint: Path, out: Path) -> list[Scalar]:
    """Copy `checkpoint` to `out` with the restore file's scalars written in; returns them."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise RestoreError(checkpoint, "not a directory; give the safetensors checkpoint directory.")
    scalars = read_restore(restore)
    _only_regular_files(checkpoint)
    tensors = stored_tensors(checkpoint)
    writes = [planned(scalar, tensors, checkpoint) for scalar in scalars]
    with staged(out, checkpoint) as staging:
        shutil.copytree(checkpoint, staging, dirs_exist_ok=True)
        for write in writes:
            with open(staging / write.file, "r+b") as f:
                f.seek(write.offset)
                f.write(write.data)
    return scalars


def _only_regular_files(checkpoint: Path) -> None:
    """Refuse what the copy could not copy whole: a device (a link to /dev/zero is read without
    end, filling the disk), a pipe or a broken link."""
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_dir() and not path.is_file():
            raise RestoreError(checkpoint, f"{path.relative_to(checkpoint)} is not a regular file (a device, a pipe or a broken "
                                           "link); remove it, or give a checkpoint directory without it.")


@contextmanager
def staged(out: Path, source: Path) -> Iterator[Path]:
    """A new directory next to `out`, moved onto it when the block succeeds, removed when it fails.
    `out` must not exist or be empty, and must not overlap `source`."""
    resolved, inside = out.resolve(), source.resolve()
    if resolved == inside or inside in resolved.parents or resolved in inside.parents:
        raise BadOptionError("--out", f"{out} overlaps the checkpoint {source}; the input is never written: give another directory.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadOptionError("--out", f"{out} exists and is not an empty directory; give a new one.")
    if not out.parent.is_dir():
        raise BadOptionError("--out", f"{out.parent} is not a directory; create it or write elsewhere.")
    staging = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        staging.mkdir()
        yield staging
        os.replace(staging, out)
    except OSError as exc:
        raise UnwritableOutputError("--out", out, exc.strerror or str(exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
