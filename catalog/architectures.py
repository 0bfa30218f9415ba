"""The adapter registry: where each architecture keeps its blocks and MLP down projections.

Adding an architecture is one `Adapter(...)` line in `ADAPTERS`. The layout of each down
projection (nn.Linear `[out, in]`, GPT-2 Conv1D `[in, out]`, fused MoE experts `[E, out, in]`)
is read off the module itself and checked against the config's sizes in `down_projections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from catalog.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Adapter:
    family: str  # fallback family name when neither Hub metadata nor the name give one
    model_types: tuple[str, ...]
    blocks: str  # dotted path from the model to its list of transformer blocks
    down: tuple[str, ...]  # dotted paths, inside a block, of each down projection (MoE: experts)
    dense: tuple[str, ...] = ()  # MoE: the same for a block without experts (`mlp_only_layers`)


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("Llama", ("llama",), "model.layers", ("mlp.down_proj",)),
    Adapter("Mistral", ("mistral",), "model.layers", ("mlp.down_proj",)),
    Adapter("Qwen2", ("qwen2",), "model.layers", ("mlp.down_proj",)),
    Adapter("Qwen3", ("qwen3",), "model.layers", ("mlp.down_proj",)),
    Adapter("Gemma", ("gemma",), "model.layers", ("mlp.down_proj",)),
    Adapter("Gemma 2", ("gemma2",), "model.layers", ("mlp.down_proj",)),
    Adapter("Gemma 3", ("gemma3_text",), "model.layers", ("mlp.down_proj",)),
    Adapter("Phi-3", ("phi3",), "model.layers", ("mlp.down_proj",)),
    Adapter("OLMo", ("olmo",), "model.layers", ("mlp.down_proj",)),
    Adapter("OLMo 2", ("olmo2",), "model.layers", ("mlp.down_proj",)),
    Adapter("GPT-2", ("gpt2",), "transformer.h", ("mlp.c_proj",)),
    Adapter("Pythia", ("gpt_neox",), "gpt_neox.layers", ("mlp.dense_4h_to_h",)),
    Adapter("Falcon", ("falcon",), "transformer.h", ("mlp.dense_4h_to_h",)),
    Adapter("OPT", ("opt",), "model.decoder.layers", ("fc2",)),
    Adapter("BLOOM", ("bloom",), "transformer.h", ("mlp.dense_4h_to_h",)),
    Adapter("Mixtral", ("mixtral",), "model.layers", ("mlp.experts",)),
    Adapter("Qwen-MoE", ("qwen2_moe",), "model.layers", ("mlp.experts", "mlp.shared_expert.down_proj"), ("mlp.down_proj",)),
    Adapter("Qwen3-MoE", ("qwen3_moe",), "model.layers", ("mlp.experts",), ("mlp.down_proj",)),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str, source: str) -> Adapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(source, model_type, supported_model_types())


@dataclass(frozen=True)
class DownProjection:
    """One down projection of one layer and how its weight is stored.

    layout: "out_in" (nn.Linear), "in_out" (Conv1D, stored transposed) or "experts"
    (a fused `[num_experts, out, in]` parameter; per-expert inputs are recomputed by the hook).
    """

    layer: int
    param: str  # state-dict name of the weight
    module: nn.Module
    weight: torch.Tensor
    layout: str

    def index(self, row: int, col: int, expert: int | None = None) -> tuple[int, ...]:
        """Index into the stored tensor of the paper's W[row, col] (row = output channel)."""
        if self.layout == "experts":
            return (expert, row, col)
        return (col, row) if self.layout == "in_out" else (row, col)

    def out_row(self, row: int, expert: int | None = None) -> torch.Tensor:
        """W[row, :] as a vector over input channels, whatever the storage layout."""
        if self.layout == "experts":
            return self.weight[expert, row]
        return self.weight[:, row] if self.layout == "in_out" else self.weight[row]


def down_projections(model: nn.Module, adapter: Adapter, hidden_size: int) -> list[DownProjection]:
    """Every down projection of the model, in layer order, with its layout checked against hidden_size."""
    blocks = model.get_submodule(adapter.blocks)
    found = []
    for layer, block in enumerate(blocks):
        for path in _paths(block, adapter):
            module = block.get_submodule(path)
            param = f"{adapter.blocks}.{layer}.{path}" + (".down_proj" if path.endswith("experts") else ".weight")
            found.append(_describe(layer, param, module, hidden_size))
    return found


def _paths(block: nn.Module, adapter: Adapter) -> tuple[str, ...]:
    """The block's down projections: MoE models may keep some layers dense."""
    try:
        block.get_submodule(adapter.down[0])
    except AttributeError:
        if adapter.dense:
            return adapter.dense
        raise
    return adapter.down


def _describe(layer: int, param: str, module: nn.Module, hidden_size: int) -> DownProjection:
    if isinstance(module, nn.Linear):
        weight, layout, out_dim = module.weight, "out_in", 0
    elif type(module).__name__ == "Conv1D":
        weight, layout, out_dim = module.weight, "in_out", 1  # Conv1D computes x @ W, W is [in, out]
    elif getattr(module, "down_proj", None) is not None and module.down_proj.dim() == 3:
        if getattr(module, "is_transposed", False):
            raise NotImplementedError(f"{param}: transposed fused experts are not supported yet")
        weight, layout, out_dim = module.down_proj, "experts", 1
    else:
        raise TypeError(f"{param}: unexpected down projection module {type(module).__name__}")
    assert weight.shape[out_dim] == hidden_size, f"{param}: shape {tuple(weight.shape)} vs hidden {hidden_size}"
    return DownProjection(layer, param, module, weight, layout)
