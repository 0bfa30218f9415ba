"""Load a GGUF file straight into a model built on the meta device, as `catalog.reader` does for safetensors.

transformers reads a GGUF's config and tensors with `load_gguf_checkpoint`, which parses the file
with `gguf.GGUFReader`: that builds a numpy view per vocabulary entry, 6 s for SmolLM2's 49k
tokens on a shared 2-core machine, and AutoConfig, AutoTokenizer and `from_pretrained` each parse
it again (27 s of a 69 s scan). Here `catalog.gguf_meta` parses it (`read_header`):

- the config dict is built from the same tables transformers reads (`GGUF_CONFIG_MAPPING`,
  `GGUF_CONFIG_DEFAULTS_MAPPING`) the way `load_gguf_checkpoint` builds it, and handed to
  AutoConfig and AutoTokenizer in its place, and the tokenizer's vocabulary and merges read
  by `catalog.gguf_meta.read_everything` where transformers' own reader parses the file three
  times (`parsed_once`);
- each tensor is dequantized from a memory map, in threads: the legacy block types and the
  k-quants by torch (`catalog.gguf_blocks`: gguf's own float32 operations, the same bits, several
  times faster), the others by the `gguf` package (`gguf.dequantize`, as transformers does); then passed
  through transformers' own tensor processor for the architecture (for llama-family models it
  undoes llama.cpp's Q/K row permutation) and its GGUF to state-dict name map
  (`get_gguf_hf_weights_map`).

Architectures that `load_gguf_checkpoint` treats specially (`SPECIAL`), and those transformers
loads by its newer GGUF path, are left to transformers: `gguf_config` returns None for them.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from catalog.gguf_blocks import TORCH_BLOCKS
from catalog.gguf_meta import Everything, Header, TensorEntry, read_everything
from catalog.patches import replaced

# `load_gguf_checkpoint` renames these architectures or edits their config after the generic mapping
SPECIAL = ("t5", "stablelm", "qwen2moe", "qwen3moe", "gpt_oss", "gpt-oss", "minimax-m2", "gemma3", "gemma4", "lfm2")
TIED_ANYWAY = ("falcon", "bloom")  # tie_word_embeddings whether or not the file has output.weight

T = TypeVar("T")
R = TypeVar("R")


def gguf_config(header: Header) -> dict[str, object] | None:
    """The config dict `load_gguf_checkpoint(file)["config"]` gives, or None where this module leaves
    the file to transformers (a special or unknown architecture, a config value in a long array)."""
    from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch, name = header.architecture, header.metadata.get("general.name")
    mistral = "llama" in arch and name == "mistral"  # transformers' rename: its `"mistral" in [general.name]`
    if arch not in GGUF_CONFIG_MAPPING or any(s in arch for s in SPECIAL) or _newer_reader(arch) or mistral:
        return None
    config: dict[str, object] = {"tie_word_embeddings": all(t.name != "output.weight" for t in header.tensors) or arch in TIED_ANYWAY}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(arch, {}).items():
        config.setdefault(key, value)
    renames = {key: _renamed(GGUF_CONFIG_MAPPING, key) for key in {**header.array_lengths, **header.metadata}}
    if any(renames[key] for key in header.array_lengths if key not in header.metadata):
        return None  # a config value in an array too long for `read_header` to keep
    for key, value in header.metadata.items():  # in file order, as transformers reads them
        if renames[key]:
            config[renames[key]] = value[0] if isinstance(value, list) and len(value) == 1 else value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in header.array_lengths:
        config["vocab_size"] = header.array_lengths["tokenizer.ggml.tokens"]
    return None if config.get("model_type") in SPECIAL else config


def _renamed(mapping: dict[str, dict[str, object]], key: str) -> str | None:
    """The config field a metadata key sets (`llama.block_count`: `num_hidden_layers`), if any."""
    prefix, _, rest = key.partition(".")
    renamed = mapping.get(prefix, {}).get(rest)
    return renamed if isinstance(renamed, str) else None


def _newer_reader(arch: str) -> bool:
    """transformers reads these architectures' config by its newer GGUF reader (and their tensors
    by its newer loader), not by `load_gguf_checkpoint`."""
    try:
        from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS
    except ImportError:  # transformers before that reader
        return False
    return arch in GGUF_CONFIG_ARCHS


@contextmanager
def parsed_once(path: Path, config: dict[str, object] | None) -> Iterator[None]:
    """While this holds, transformers' parses of the file at `path` are answered by ours:
    `load_gguf_checkpoint(path)` (metadata only: AutoConfig and AutoTokenizer call it) returns
    `config`, and the newer `read_gguf_metadata(path, ...)` (which AutoConfig, AutoTokenizer and the
    tokenizer's vocabulary call, three parses of the file) a copy of one `read_everything(path)`.
    Where that cannot read the file, transformers' own reader does, and says why."""
    import transformers.modeling_gguf_pytorch_utils as legacy

    original = legacy.load_gguf_checkpoint
    target = Path(path).resolve()

    def load(file, return_tensors=False, **kwargs):  # type: ignore[no-untyped-def]
        if config is None or return_tensors or Path(file).resolve() != target:
            return original(file, return_tensors=return_tensors, **kwargs)
        return {"config": dict(config)}

    with contextlib.ExitStack() as stack:
        stack.enter_context(replaced(legacy, "load_gguf_checkpoint", load))
        for owner, read in _metadata_readers(target):
            stack.enter_context(replaced(owner, "read_gguf_metadata", read))
        yield


def _metadata_readers(target: Path) -> list[tuple[object, Callable]]:
    """transformers' `read_gguf_metadata`, where it has one, and its stand-in: by the package
    (AutoConfig and AutoTokenizer import it from there) and by its module (the tokenizer's)."""
    try:
        import transformers.integrations.gguf as package
        from transformers.integrations.gguf import reader
    except ImportError:  # transformers before its newer GGUF reader
        return []
    original = reader.read_gguf_metadata

    @functools.cache
    def ours() -> Everything | None:
        try:
            return read_everything(target)
        except ValueError:
            return None

    def read(file, string_arrays=()):  # type: ignore[no-untyped-def]
        if Path(file).resolve() != target or (everything := ours()) is None:
            return original(file, string_arrays)
        return everything.as_transformers(string_arrays)

    return [(package, read), (reader, read)]


def _name_map(model: nn.Module, processor: object) -> dict[str, str]:
    """GGUF tensor name -> state-dict name, by transformers' `get_gguf_hf_weights_map`. That
    recurses into every submodule and builds gguf's tensor name map afresh at each (8 s for
    SmolLM2's 400 modules); here the map of an architecture and depth is built once."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    with replaced(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map)):
        return get_gguf_hf_weights_map(model, processor)


def read_tensors(header: Header, config: dict[str, object], model: nn.Module, device: torch.device,
                 dtype: torch.dtype, threads: int | None = None, only: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """State-dict name -> tensor on `device` in `dtype`: what `load_gguf_checkpoint(return_tensors=True,
    model_to_load=model)` gives, one tensor dequantized per thread, in file order, the parts of a
    split model in turn (`only`: just the file's tensors of those state-dict names)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(header.architecture, TensorProcessor)(config=config)
    names = _name_map(model, processor)
    entries = header.tensors if only is None else [e for e in header.tensors if names.get(e.name) in only]
    parsed: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}  # MoE processors write merged experts here
    # copy-on-write: writable for torch (no warning), never written
    maps = {file: np.memmap(file, dtype=np.uint8, mode="c") for file in dict.fromkeys(e.file for e in entries)}
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads, thread_name_prefix="gguf-dequantize") as pool:
        for entry, weights in _in_order(pool, lambda e: dequantize(maps[e.file], e), entries, 2 * threads):
            result = processor.process(weights=weights, name=entry.name, tensor_key_mapping=names, parsed_parameters=parsed)
            if result.name in names:
                parsed["tensors"][names[result.name]] = _torch(result.weights, device, dtype)
    return {name: tensor.to(device=device, dtype=dtype) for name, tensor in parsed["tensors"].items()}


def dequantize(data: np.ndarray, entry: TensorEntry) -> np.ndarray:
    """One tensor in float32, shaped as the file says: the bytes `gguf.GGUFReader` would hand
    `gguf.dequantize` (rows of blocks), read from the memory map. The block types of
    `TORCH_BLOCKS` are dequantized by torch, bit for bit gguf's arithmetic; the rest by gguf."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf import dequantize as gguf_dequantize

    kind = GGMLQuantizationType(entry.ggml_type)
    block, block_bytes = GGML_QUANT_SIZES[kind]
    *outer, inner = entry.shape or (1,)
    if inner % block:
        raise ValueError(f"tensor {entry.name}'s rows of {inner} values are not whole {kind.name} blocks of {block}")
    row_bytes = inner // block * block_bytes
    raw = data[entry.start: entry.start + int(np.prod(outer, dtype=np.int64)) * row_bytes]
    if len(raw) < int(np.prod(outer, dtype=np.int64)) * row_bytes:
        raise ValueError(f"tensor {entry.name} lies past the end of the file (truncated?)")
    if kind.name in TORCH_BLOCKS:
        blocks = torch.from_numpy(raw).view(-1, block_bytes)  # (blocks, bytes), on the map's pages
        return TORCH_BLOCKS[kind.name](blocks).numpy().reshape(entry.shape)
    return gguf_dequantize(raw.reshape(*outer, row_bytes), kind).reshape(entry.shape)


def _torch(weights: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.require(weights, requirements="W")).to(device=device, dtype=dtype)


def _in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in the items' order, at most `ahead` computed before they are taken."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) > ahead:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()
