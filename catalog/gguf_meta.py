"""The key-value metadata of a GGUF file (`general.name`, `general.file_type`, ...) and its tensor
table, read without torch.

GGUF (llama.cpp's format) starts with `GGUF`, a version, the tensor and key counts, then the
keys: a length-prefixed name, a value type, a value. Arrays are skipped unless they are short
(`MAX_ARRAY`): the tokenizer's vocabulary lives here too, and `gguf.GGUFReader` would build all
of it (seconds for a 49k vocabulary) to answer what the first few keys already say; only the
tokenizer needs it (`read_everything`). The tensor
table follows: per tensor a name, its dimensions (innermost first), a ggml type and an offset
into the data, which starts at the next multiple of `general.alignment` (32 by default).

llama.cpp writes a large model in parts (`gguf-split`: `name-00001-of-00003.gguf`, ...): the first
holds the metadata, every part some of the tensors and its `split.no` of `split.count`.
`read_model_header` reads the parts as one file.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Container
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_ARRAY = 64  # longer arrays (vocabularies, merges, scores) are skipped, not kept
MAX_STRING = 1 << 24
MAX_DIMS = 8
TRUNCATED = "the GGUF metadata ends early: the file is truncated"
_LENGTH = struct.Struct("<Q")
PART = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")  # llama.cpp's `llama_split_path`


class BigEndianError(ValueError):
    """A GGUF file written for a big-endian machine (s390x): whole, but not one transformers reads."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: where its bytes start and how they are stored."""

    name: str
    shape: tuple[int, ...]  # outermost first, as numpy and torch index it (the file lists ggml's order)
    ggml_type: int
    start: int  # absolute byte offset in its file
    file: Path = Path()  # the file (of a split model: the part) holding it


@dataclass(frozen=True)
class Header:
    metadata: dict[str, object]  # arrays longer than MAX_ARRAY left out
    array_lengths: dict[str, int]  # every array's length, those left out too
    tensors: tuple[TensorEntry, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def read_metadata(path: Path) -> dict[str, object]:
    """Every key of the file with its value (arrays longer than `MAX_ARRAY` left out).

    Raises `ValueError` for a file that is not GGUF or is cut short."""
    with open(path, "rb") as f:
        return _key_values(f, path)[0]


def read_header(path: Path) -> Header:
    """The metadata and the tensor table (no tensor data). `ValueError` as `read_metadata`."""
    with open(path, "rb") as f:
        metadata, lengths, tensors, _ = _key_values(f, path)
        entries = [_tensor_entry(f) for _ in range(tensors)]
        alignment = int(metadata.get("general.alignment", 32))  # type: ignore[call-overload]
        data = -(-f.tell() // alignment) * alignment
    return Header(metadata, lengths, tuple(TensorEntry(n, s, t, data + offset, Path(path)) for n, s, t, offset in entries))


@dataclass(frozen=True)
class Everything:
    """Every key of one file with its value, arrays in full, and its tensor names: what transformers'
    own GGUF reader gives its tokenizer, read here in a seventh of its time (SmolLM2's vocabulary
    and merges, 98k strings: 0.06 s against 0.42 s)."""

    metadata: dict[str, object]
    string_arrays: frozenset[str]  # the keys whose value is a list of strings
    tensor_names: tuple[str, ...]

    def as_transformers(self, string_arrays: Container[str] = ()) -> tuple[dict[str, object], tuple[str, ...]]:
        """`read_gguf_metadata(path, string_arrays)` of `transformers.integrations.gguf`: an array of
        strings not asked for is its length; every list a copy of its own."""
        def given(key: str, value: object) -> object:
            if key in self.string_arrays and key not in string_arrays:
                return len(value)  # type: ignore[arg-type]
            return list(value) if isinstance(value, list) else value

        return {key: given(key, value) for key, value in self.metadata.items()}, self.tensor_names


def read_everything(path: Path) -> Everything:
    """The metadata with every array in full, and the file's tensor names; every string decoded
    strictly, as transformers decodes them (`UnicodeDecodeError`, a `ValueError`, where one is not
    UTF-8, where `read_header` replaces the bytes).
    `ValueError` also for an array of arrays, which transformers does not read either."""
    with open(path, "rb") as f:
        metadata, _, tensors, strings = _key_values(f, path, everything=True)
        names = tuple(_tensor_entry(f, "strict")[0] for _ in range(tensors))
    return Everything(metadata, frozenset(strings), names)


def part_names(name: str) -> list[str]:
    """The files (names, or paths inside a folder or repo) of the split model that file `name` is a
    part of, the first first; just `name` for a file not named as a part (`-of-00000` included)."""
    folder, slash, file = name.rpartition("/")
    part = PART.match(file)
    count = int(part["count"]) if part else 0
    if count < 1:
        return [name]
    return [f"{folder}{slash}{part['stem']}-{no:05d}-of-{count:05d}.gguf" for no in range(1, count + 1)]


def first_part(path: Path) -> Path:
    """The first part of the split GGUF that `path` is a part of, which holds its metadata; else `path`."""
    return path.with_name(part_names(path.name)[0])


def read_model_header(path: Path) -> Header:
    """The header of the model that file `path` (a whole model, or the first part of a split one)
    holds: the first part's metadata and every part's tensors. `ValueError` for a part that is
    missing, is not where its name says, or does not say what its name does (`split.no`, `split.count`),
    and for a tensor stored twice."""
    path = Path(path)
    first = read_header(path)
    count, no = split_field(first, "split.count", path), split_field(first, "split.no", path)
    if count <= 1:
        return _once_each(first)
    names = part_names(path.name)
    if (len(names), names[0], no) != (count, path.name, 0):
        raise ValueError(f"{path.name} says it is part {no + 1} of {count}, which its name does not: "
                         f"llama.cpp names the parts NAME-00001-of-{count:05d}.gguf, ...")
    tensors = list(first.tensors)
    for k, name in enumerate(names[1:], start=1):
        file = path.parent / name
        if not file.is_file():
            raise ValueError(f"{path.name} is part 1 of {count}, and part {k + 1} ({name}) is not beside it")
        part = read_header(file)
        if (split_field(part, "split.no", file), split_field(part, "split.count", file)) != (k, count):
            raise ValueError(f"{name} does not say it is part {k + 1} of {count} (its split.no and split.count)")
        tensors += part.tensors
    return _once_each(replace(first, tensors=tuple(tensors)))


def _once_each(header: Header) -> Header:
    """`header`, refused if it names a tensor twice: a loader would keep one of the two, unsaid."""
    seen: dict[str, TensorEntry] = {}
    for entry in header.tensors:
        if entry.name in seen:
            where = {seen[entry.name].file.name, entry.file.name}
            raise ValueError(f"tensor {entry.name} is stored twice (in {' and '.join(sorted(where))})")
        seen[entry.name] = entry
    return header


SPLIT_DEFAULTS = {"split.no": 0, "split.count": 1}  # a whole file: part 0 of 1


def split_field(header: Header, key: str, path: Path) -> int:
    """`split.no` or `split.count` of the file at `path`; `ValueError` where it is not an integer."""
    value = header.metadata.get(key, SPLIT_DEFAULTS[key])
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{path.name}: its {key} is {value!r}, not a count")
    return value


def read_tensor_names(path: Path) -> list[str]:
    """The names of the model's tensors, in file order (`blk.11.ffn_down.weight`): of a split model
    (any of its parts given), those of every part."""
    return [tensor.name for tensor in read_model_header(first_part(Path(path))).tensors]


def _key_values(f: BinaryIO, path: Path, everything: bool = False) -> tuple[dict[str, object], dict[str, int], int, list[str]]:
    """(metadata, array lengths, tensor count, the keys of arrays of strings), the file left at the
    tensor table; `everything`: long arrays kept too."""
    if f.read(4) != b"GGUF":
        raise ValueError(f"{Path(path).name}: not a GGUF file (no GGUF magic)")
    version, tensors, count = struct.unpack("<IQQ", _exact(f, 20))
    if version and not version & 0xFFFF:  # gguf's own test: a version read in the wrong byte order
        raise BigEndianError(f"{Path(path).name} is a big-endian GGUF file, which transformers does not read; convert it "
                             f"to little-endian (in place) with the gguf package's `gguf-convert-endian {Path(path).name} little`")
    if version < 2:
        raise ValueError(f"{Path(path).name}: GGUF version {version} is too old to read")
    metadata, lengths, strings = {}, {}, []
    errors = "strict" if everything else "replace"
    for _ in range(count):
        key, kind = _string(f, errors), _unpack(f, "<I")
        if kind == ARRAY:
            item, lengths[key] = _unpack(f, "<I"), _unpack(f, "<Q")
            value = _whole_array(f, item, lengths[key]) if everything else _array(f, item, lengths[key])
            if item == STRING:
                strings.append(key)
        else:
            value = _value(f, kind, errors)
        if value is not _SKIPPED:
            metadata[key] = value
    return metadata, lengths, tensors, strings


def _tensor_entry(f: BinaryIO, errors: str = "replace") -> tuple[str, tuple[int, ...], int, int]:
    name, dims = _string(f, errors), _unpack(f, "<I")
    if dims > MAX_DIMS:
        raise ValueError(f"a GGUF tensor of {dims} dimensions: the file is corrupt")
    shape = struct.unpack(f"<{dims}Q", _exact(f, 8 * dims))
    kind, offset = struct.unpack("<IQ", _exact(f, 12))
    return name, tuple(reversed(shape)), kind, offset


_SKIPPED = object()


def _value(f: BinaryIO, kind: int, errors: str = "replace") -> object:
    if kind == STRING:
        return _string(f, errors)
    if kind == ARRAY:
        return _array(f, _unpack(f, "<I"), _unpack(f, "<Q"))
    if kind not in SCALARS:
        raise ValueError(f"unknown GGUF value type {kind}")
    return _unpack(f, SCALARS[kind])


def _array(f: BinaryIO, item: int, length: int) -> object:
    if length > MAX_ARRAY:
        _skip_array(f, item, length)
        return _SKIPPED
    return [_value(f, item) for _ in range(length)]


def _whole_array(f: BinaryIO, item: int, length: int) -> list:
    """Every value of an array: of numbers in one unpack, of strings decoded strictly."""
    if item in SCALARS:
        code = SCALARS[item][1]
        return list(struct.unpack(f"<{length}{code}", _exact(f, _in_file(f, struct.calcsize(code) * length))))
    if item == STRING:
        return _strings(f, length, decode=True)
    raise ValueError(f"a GGUF array of value type {item}, which transformers does not read")


def _skip_array(f: BinaryIO, item: int, length: int) -> None:
    if item in SCALARS:
        f.seek(_in_file(f, struct.calcsize(SCALARS[item]) * length), 1)
    elif item == STRING:
        _strings(f, length, decode=False)
    else:
        for _ in range(length):
            _value(f, item)


def _strings(f: BinaryIO, count: int, decode: bool) -> list[str]:
    """`count` strings, decoded strictly; or, not `decode`, walked past reading only their lengths
    (SmolLM2's vocabulary and merges, 98k strings, in 0.03 s where decoding them takes 0.05 s)."""
    read, seek, unpack = f.read, f.seek, _LENGTH.unpack
    values: list[str] = []
    try:
        for _ in range(count):
            (length,) = unpack(read(8))
            if length > MAX_STRING:
                raise _too_long(length)
            if not decode:
                seek(length, 1)
            elif len(data := read(length)) == length:
                values.append(data.decode("utf-8"))
            else:
                raise ValueError(TRUNCATED)
    except struct.error:  # fewer than 8 bytes left
        raise ValueError(TRUNCATED) from None
    return values


def _in_file(f: BinaryIO, size: int) -> int:
    """`size`, refused where fewer bytes are left in the file: an array's corrupt length would have
    exabytes read (a MemoryError, taken for the host's) or sought past."""
    if size > os.fstat(f.fileno()).st_size - f.tell():
        raise ValueError(TRUNCATED)
    return size


def _string(f: BinaryIO, errors: str = "replace") -> str:
    """A string, its bytes that are not UTF-8 replaced (or, `errors="strict"`, refused)."""
    length = _unpack(f, "<Q")
    if length > MAX_STRING:
        raise _too_long(length)
    return _exact(f, length).decode("utf-8", errors=errors)


def _too_long(length: int) -> ValueError:
    return ValueError(f"a GGUF string of {length} bytes: the file is corrupt")


def _unpack(f: BinaryIO, fmt: str):  # type: ignore[no-untyped-def]
    return struct.unpack(fmt, _exact(f, struct.calcsize(fmt)))[0]


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(TRUNCATED)
    return data
