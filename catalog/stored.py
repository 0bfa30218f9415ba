"""Each super weight's value as its checkpoint stores it, where the scan computed in a narrower dtype.

A bfloat16 scan (`--dtype auto` on a GPU, or on a CPU with AMX) of float32 or float16 weights, or
of a GGUF file dequantized to float32, holds every weight rounded to bfloat16's 8 bits: SmolLM2's
W[507, 1229] is 5.875732421875 in the file and 5.875 in the model. Keep lists and restore files
must carry the file's value, so it is read back from the file: by name and index from the
safetensors shards, or dequantized from the GGUF file. Only for the loaders that placed the
checkpoint's tensors unchanged under their own names (`parallel`, `gguf`); where transformers
converted the checkpoint, the model's value stays.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from catalog.loading import LoadedModel, gguf_file
from catalog.reader import checkpoint_shards
from catalog.result import SuperWeight
from catalog.safetensors_header import read_header
from catalog.sources import ResolvedSource

DECODERS: dict[str, tuple[int, Callable[[bytes], float]]] = {
    "F64": (8, lambda b: struct.unpack("<d", b)[0]),
    "F32": (4, lambda b: struct.unpack("<f", b)[0]),
    "F16": (2, lambda b: struct.unpack("<e", b)[0]),
    "BF16": (2, lambda b: struct.unpack("<f", b"\0\0" + b)[0]),  # float32's upper half
}
Reader = Callable[[ResolvedSource, nn.Module, list[SuperWeight]], dict[int, float]]  # weight number -> value


def as_stored(source: ResolvedSource, loaded: LoadedModel, weights: list[SuperWeight]) -> list[SuperWeight]:
    """`weights` with each `value` as the checkpoint holds it (float32 scans hold it exactly already)."""
    read = READERS.get(loaded.loader)
    if not weights or read is None or loaded.info.dtype in ("float32", "float64"):
        return weights
    values = read(source, loaded.model, weights)
    return [replace(w, value=values[i]) if i in values else w for i, w in enumerate(weights)]


def _flat(weight: SuperWeight, shape: tuple[int, ...]) -> int | None:
    """The weight's element number in a row-major tensor of `shape`, if that is the shape it indexes."""
    if weight.tensor_shape is None or tuple(weight.tensor_shape) != shape:
        return None
    flat = 0
    for size, i in zip(shape, weight.tensor_index, strict=True):
        flat = flat * size + i
    return flat


def from_safetensors(source: ResolvedSource, model: nn.Module, weights: list[SuperWeight]) -> dict[int, float]:
    wanted = {w.param for w in weights}
    entries = {name: (file, entry) for file in checkpoint_shards(source.path)
               for name, entry in read_header(file).items() if name in wanted and entry.dtype in DECODERS}
    values = {}
    for i, w in enumerate(weights):
        file, entry = entries.get(w.param, (None, None))
        flat = _flat(w, entry.shape) if entry else None
        if flat is not None:
            width, decode = DECODERS[entry.dtype]
            with open(file, "rb") as f:
                f.seek(entry.start + flat * width)
                values[i] = decode(f.read(width))
    return values


def from_gguf(source: ResolvedSource, model: nn.Module, weights: list[SuperWeight]) -> dict[int, float]:
    """The holding tensors dequantized again, in float32 on the CPU, as the load dequantized them."""
    from catalog.gguf_load import read_tensors

    gguf = gguf_file(source)
    tensors = read_tensors(gguf.path, gguf.header, gguf.config, model, torch.device("cpu"), torch.float32,
                           only={w.param for w in weights})
    values = {}
    for i, w in enumerate(weights):
        tensor = tensors.get(w.param)
        if tensor is not None and _flat(w, tuple(tensor.shape)) is not None:
            values[i] = tensor[tuple(w.tensor_index)].item()
    return values


READERS: dict[str, Reader] = {"parallel": from_safetensors, "gguf": from_gguf}
