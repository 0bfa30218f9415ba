"""The header of a safetensors file, read without torch: the loader (`catalog.reader`) and
`apply-restore` (`catalog.restore`, which must not import torch) share one parser and its checks.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte span in the data that follows), then the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class Entry:
    """One tensor as the header describes it; `start` is its absolute byte offset in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def read_header(file: Path) -> dict[str, Entry]:
    """Every tensor of `file` by name; ValueError names what is wrong with a file that is not one."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER, size - 8):
            raise ValueError(f"{file.name}: not a safetensors file (header length {length}, file size {size})")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file.name}: unreadable safetensors header ({exc})") from exc
    base, entries = 8 + length, {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if not 0 <= begin <= end <= size - base:
            raise ValueError(f"{file.name}: tensor {name} lies past the end of the file (truncated?)")
        entries[name] = Entry(meta["dtype"], tuple(meta["shape"]), base + begin, end - begin)
    return entries


def flat_index(index: Sequence[int], shape: Sequence[int]) -> int:
    """The element number of `index` in a tensor of `shape`: safetensors stores a tensor row-major."""
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat
