"""Each super weight's value as its checkpoint stores it, not as the scanned model holds it.

A bfloat16 scan (`--dtype auto` on a GPU, or on a CPU with AMX) of float32 or float16 weights, or
of a GGUF file dequantized to float32, holds every weight rounded to bfloat16's 8 bits: SmolLM2's
W[507, 1229] is 5.875732421875 in the file and 5.875 in the model. And a model's own code may
change its weights in place: RWKV, run for inference, divides the value weights of its blocks
from `rescale_every` on by powers of two. Keep lists and restore files must carry the file's
value, so it is read back from the file: by name and index from the safetensors shards, where a
tensor of the weight's name has the shape it was found in (a tensor transformers renamed or
fused on load is not there, and its weight keeps the model's value), or dequantized from the
GGUF file the load read itself. Quantized checkpoints store packed values, and keep the model's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import torch

from catalog.loading import LoadedModel
from catalog.reader import index_shards
from catalog.result import SuperWeight
from catalog.safetensors_header import flat_index
from catalog.sources import ResolvedSource

Reader = Callable[[ResolvedSource, LoadedModel, list[SuperWeight]], dict[int, float]]  # weight number -> value


def as_stored(source: ResolvedSource, loaded: LoadedModel, weights: list[SuperWeight]) -> list[SuperWeight]:
    """`weights` with each `value` as the checkpoint holds it."""
    read = reader(source, loaded)
    if not weights or read is None:
        return weights
    values = read(source, loaded, weights)
    return [replace(w, value=values[i]) if i in values else w for i, w in enumerate(weights)]


def reader(source: ResolvedSource, loaded: LoadedModel) -> Reader | None:
    """How to read the values back: from the shards of an unquantized safetensors checkpoint; from
    a GGUF file this package dequantized, unless in float32, which holds its dequantization exactly."""
    if loaded.loader == "gguf":
        return None if loaded.info.dtype in ("float32", "float64") else from_gguf
    if source.format == "safetensors" and not getattr(loaded.model.config, "quantization_config", None):
        return from_safetensors
    return None


def _indexes(weight: SuperWeight, shape: tuple[int, ...]) -> bool:
    """Whether the weight's `tensor_index` addresses a tensor of `shape` (the layout it was found in)."""
    return weight.tensor_shape is not None and tuple(weight.tensor_shape) == shape


def from_safetensors(source: ResolvedSource, loaded: LoadedModel, weights: list[SuperWeight]) -> dict[int, float]:
    """Each weight's element read from its shard, in the shard's dtype."""
    spans = index_shards(source.weight_files())
    values = {}
    for i, w in enumerate(weights):
        span = spans.get(w.param)
        if span is None or not span.dtype.is_floating_point or not _indexes(w, span.shape):
            continue
        size = span.dtype.itemsize
        fd = os.open(span.file, os.O_RDONLY)
        try:
            data = os.pread(fd, size, span.start + flat_index(w.tensor_index, span.shape) * size)
        finally:
            os.close(fd)
        values[i] = torch.frombuffer(bytearray(data), dtype=span.dtype).item()
    return values


def from_gguf(source: ResolvedSource, loaded: LoadedModel, weights: list[SuperWeight]) -> dict[int, float]:
    """The holding tensors dequantized again, in float32 on the CPU, as the load dequantized them
    (from the header the load parsed)."""
    from catalog.gguf_load import read_tensors

    gguf = loaded.gguf
    tensors = read_tensors(gguf.header, gguf.config, loaded.model, torch.device("cpu"), torch.float32,
                           only={w.param for w in weights})
    values = {}
    for i, w in enumerate(weights):
        tensor = tensors.get(w.param)
        if tensor is not None and _indexes(w, tuple(tensor.shape)):
            values[i] = tensor[tuple(w.tensor_index)].item()
    return values

