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
"""

from __future__ import annotations

from functools import cache

WEIGHT = ".weight"
BLOCK = "blk."


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
    import gguf

    tables = [gguf.TensorNameMap.block_mappings_cfg, *gguf.TensorNameMap.arch_block_mappings_cfg.values()]
    found: dict[str, list[tuple[str, str]]] = {}
    for table in tables:
        for kind, modules in table.items():
            name = gguf.TENSOR_NAMES[kind].format(bid=layer)
            for module in modules:
                tail = block_tail(module.format(bid=layer), layer)
                if name.startswith(BLOCK) and tail is not None:
                    found.setdefault(tail, []).append((module.format(bid=layer), name))
    return found
