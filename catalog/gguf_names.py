"""llama.cpp's GGUF name of a decoder block's tensor (`model.layers.11.mlp.down_proj.weight` is
`blk.11.ffn_down.weight`), from llama.cpp's own table.

llama.cpp's converter names each block tensor by a table of the module names checkpoints use,
per kind of tensor (`gguf.TensorNameMap`: `transformer.h.{bid}.mlp.c_proj` and
`model.layers.{bid}.mlp.down_proj` are both `blk.{bid}.ffn_down`, fused experts
`blk.{bid}.ffn_down_exps`, shared experts `blk.{bid}.ffn_down_shexp`). That table ships in the
`gguf` package, which is read here rather than copied: an architecture llama.cpp learns is named
right by the next `gguf` release.

Names are compared from the block on (`layers.11.mlp.down_proj`): what wraps the list of blocks
differs between a checkpoint and the converter's table (`model.language_model.` in a multimodal
checkpoint, `model.` where the table says `backbone.`), the block's own structure does not. Only
the language model's tensors (`blk.*`) are candidates; where two kinds of tensor share that tail,
the one whose whole module name ends the checkpoint's wins.

Importing `gguf` (numpy, its reader) and walking the table takes 0.15-0.3 s, most of a keep list's
or a report's time: the table's block entries are kept once per installed `gguf` under
$SUPERWEIGHTS_HOME/cache (keyed by its files' sizes and times); a cache that cannot be read or
written is skipped.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from catalog import settings

WEIGHT = ".weight"
BLOCK = "blk."
TABLE_FILES = ("constants.py", "tensor_mapping.py")  # where the gguf package keeps the table


def gguf_name(param: str, layer: int) -> str | None:
    """The GGUF tensor name of `param`, a tensor of decoder block `layer`; None when llama.cpp's
    table has no such module, or names it two ways."""
    module = param.removesuffix(WEIGHT)  # fused experts' parameter is itself the module (`experts.down_proj`)
    found = _by_block_tail(layer).get(block_tail(module, layer), [])
    names = {name for _, name in found}
    if len(names) > 1:
        names = {name for known, name in found if f".{module}".endswith(f".{known}")}
    return f"{names.pop()}{WEIGHT}" if len(names) == 1 else None


def block_tail(module: str, layer: int) -> str | None:
    """`layers.11.mlp.down_proj` of `model.layers.11.mlp.down_proj`: from the list of blocks on."""
    parts = module.split(".")
    if str(layer) not in parts[1:]:
        return None
    at = parts.index(str(layer), 1)
    return ".".join(parts[at - 1:])


@cache
def _by_block_tail(layer: int) -> dict[str, list[tuple[str, str]]]:
    """Block tail -> (module name, GGUF name) of block `layer`, over every architecture of llama.cpp's table."""
    found: dict[str, list[tuple[str, str]]] = {}
    for module_form, name_form in block_table():
        module, name = module_form.format(bid=layer), name_form.format(bid=layer)
        if (tail := block_tail(module, layer)) is not None:
            found.setdefault(tail, []).append((module, name))
    return found


@cache
def block_table() -> list[tuple[str, str]]:
    """(module name, GGUF name) with `{bid}` for the block, of every block tensor in llama.cpp's table."""
    cached = _cache_file()
    try:
        if _is_table(kept := json.loads(cached.read_text())):
            return [(module, name) for module, name in kept]
    except (OSError, ValueError):
        pass
    table = _read_table()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}")
        partial.write_text(json.dumps(table))
        partial.replace(cached)
    except OSError:
        pass
    return table


def _is_table(kept: object) -> bool:
    """Whether a cache file's JSON is a table: a non-empty list of [module name, GGUF name]."""
    return isinstance(kept, list) and bool(kept) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair) for pair in kept)


def _read_table() -> list[tuple[str, str]]:
    import gguf

    tables = [gguf.TensorNameMap.block_mappings_cfg, *gguf.TensorNameMap.arch_block_mappings_cfg.values()]
    pairs = {(module, gguf.TENSOR_NAMES[kind]) for table in tables for kind, modules in table.items() for module in modules}
    return sorted((module, name) for module, name in pairs if name.startswith(BLOCK))


def _cache_file() -> Path:
    """The cache of the installed gguf's table: its name changes with the table's files."""
    spec = find_spec("gguf")  # finds the package without importing it
    folder = Path(spec.origin).parent if spec and spec.origin else None
    stamps = [f"{s.st_size}-{s.st_mtime_ns}" for s in (os.stat(folder / f) for f in TABLE_FILES)] if folder else ["none"]
    return settings.home() / "cache" / f"gguf-block-names-{'-'.join(stamps)}.json"
