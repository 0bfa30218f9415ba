"""The key-value metadata of a GGUF file (`general.name`, `general.file_type`, ...) and its tensor
names, read without torch.

GGUF (llama.cpp's format) starts with `GGUF`, a version, the tensor and key counts, then the
keys: a length-prefixed name, a value type, a value. Arrays are skipped unless they are short
(`MAX_ARRAY`): the tokenizer's vocabulary lives here too, and `gguf.GGUFReader` would build all
of it (seconds for a 49k vocabulary) to answer what the first few keys already say.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_ARRAY = 64  # longer arrays (vocabularies, merges, scores) are skipped, not kept
MAX_STRING = 1 << 24


def read_metadata(path: Path) -> dict[str, object]:
    """Every key of the file with its value (arrays longer than `MAX_ARRAY` left out).

    Raises `ValueError` for a file that is not GGUF or is cut short."""
    with open(path, "rb") as f:
        return _header(f, Path(path).name)[1]


def read_tensor_names(path: Path) -> list[str]:
    """The names of the file's tensors, in file order (`blk.11.ffn_down.weight`): the tensor infos
    that follow the keys, each a name, its dimensions, its type and its data offset."""
    with open(path, "rb") as f:
        tensors, _ = _header(f, Path(path).name)
        names = []
        for _ in range(tensors):
            names.append(_string(f))
            f.seek(8 * _unpack(f, "<I") + 4 + 8, 1)  # the dimensions (uint64 each), the type, the offset
        return names


def _header(f: BinaryIO, name: str) -> tuple[int, dict[str, object]]:
    """The tensor count and the keys; leaves `f` at the first tensor info."""
    if f.read(4) != b"GGUF":
        raise ValueError(f"{name}: not a GGUF file (no GGUF magic)")
    version, tensors, count = struct.unpack("<IQQ", _exact(f, 20))
    if version < 2:
        raise ValueError(f"{name}: GGUF version {version} is too old to read")
    metadata = {}
    for _ in range(count):
        key = _string(f)
        value = _value(f, _unpack(f, "<I"))
        if value is not _SKIPPED:
            metadata[key] = value
    return tensors, metadata


_SKIPPED = object()


def _value(f: BinaryIO, kind: int) -> object:
    if kind == STRING:
        return _string(f)
    if kind == ARRAY:
        item, length = _unpack(f, "<I"), _unpack(f, "<Q")
        if length > MAX_ARRAY:
            _skip_array(f, item, length)
            return _SKIPPED
        return [_value(f, item) for _ in range(length)]
    if kind not in SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    return _unpack(f, SCALARS[kind])


def _skip_array(f: BinaryIO, item: int, length: int) -> None:
    if item in SCALARS:
        f.seek(struct.calcsize(SCALARS[item]) * length, 1)
        return
    for _ in range(length):
        _value(f, item)


def _string(f: BinaryIO) -> str:
    length = _unpack(f, "<Q")
    if length > MAX_STRING:
        raise ValueError(f"a GGUF string of {length} bytes: the file is corrupt")
    return _exact(f, length).decode("utf-8", errors="replace")


def _unpack(f: BinaryIO, fmt: str):  # type: ignore[no-untyped-def]
    return struct.unpack(fmt, _exact(f, struct.calcsize(fmt)))[0]


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("the GGUF metadata ends early: the file is truncated")
    return data
