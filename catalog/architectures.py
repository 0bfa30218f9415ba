"""Find each decoder block's feed-forward output projection by structure, confirmed by behaviour.

Nothing is registered per model type. A tiny forward pass (`catalog.probe`) shows which modules
run; the decoder blocks are the model's list of `num_hidden_layers` modules that ran (for a
multimodal checkpoint, the language model's: the probe is text only). In each block, a *down
projection* is a projection (nn.Linear, GPT-2's Conv1D, another 2-D weight, or fused experts
stored `[E, out, in]` or `[E, in, out]` behind transformers' experts interface) whose output is
hidden-size wide and that sits inside the block's feed-forward part:

- the outermost token-wise module above it is bigger than the projection itself (the MLP or
  MoE block around it), and zeroing the outputs of the projections found in it zeroes that
  module's output (so they are all of what it adds to the residual stream); or
- the MLP is written into the block itself (OPT's fc1/fc2): the projection's parent mixes
  tokens through a child of its own (attention), and a sibling turned the hidden state into the
  projection's input just before.

Of projections with one parent, the last to run is the output (an up projection as wide as the
hidden state feeds it). Attention, state-space and convolution mixers are not token-wise, so
their output projections never qualify; a block without a feed-forward part (hybrids) is
recorded as such. What structure cannot tell is kept in two places: family display names
(`FAMILY_NAMES`), and the experts modules that keep their own calling convention (`catalog.experts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from catalog import probe as probing
from catalog.errors import UnsupportedArchitectureError, first_line, memory_shortage
from catalog.patches import hooked
from catalog.probe import Probe
from catalog.result import SuperWeight

# Display names where the architecture's own class name would read worse (a family name from the
# repo id, model card or GGUF metadata wins over these, `catalog.family`).
FAMILY_NAMES: dict[str, str] = {
    "gpt2": "GPT-2", "gpt_neox": "Pythia", "opt": "OPT", "bloom": "BLOOM", "qwen2_moe": "Qwen-MoE",
    "qwen3_moe": "Qwen3-MoE", "gemma2": "Gemma 2", "gemma3": "Gemma 3", "gemma3_text": "Gemma 3",
    "olmo": "OLMo", "olmo2": "OLMo 2", "olmo3": "OLMo 3", "olmoe": "OLMoE", "phi3": "Phi-3", "phi": "Phi",
}
SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "Model")

LAYOUTS = ("out_in", "in_out", "experts", "experts_in_out")
Entries = list[tuple[torch.Tensor, tuple[int, ...]]]  # (weight tensor, index into it) of scalars


@dataclass(frozen=True)
class DownProjection:
    """One down projection of one layer and how its weight is stored.

    layout: "out_in" (nn.Linear `[out, in]`), "in_out" (Conv1D, stored transposed), "experts"
    (fused `[E, out, in]`) or "experts_in_out" (fused `[E, in, out]`). `experts` says how the
    per-expert inputs of a fused module are recomputed (`catalog.experts`).
    """

    layer: int
    param: str  # state-dict name of the weight
    module: nn.Module
    weight: torch.Tensor
    layout: str
    experts: str | None = None  # "interface" (transformers' experts interface) or "pre_routed"

    @property
    def fused(self) -> bool:
        return self.layout.startswith("experts")

    def index(self, row: int, col: int, expert: int | None = None) -> tuple[int, ...]:
        """Index into the stored tensor of the paper's W[row, col] (row = output channel)."""
        return {"out_in": (row, col), "in_out": (col, row), "experts": (expert, row, col),
                "experts_in_out": (expert, col, row)}[self.layout]

    def out_row(self, row: int, expert: int | None = None) -> torch.Tensor:
        """W[row, :] as a vector over input channels, whatever the storage layout."""
        return {"out_in": lambda: self.weight[row], "in_out": lambda: self.weight[:, row],
                "experts": lambda: self.weight[expert, row], "experts_in_out": lambda: self.weight[expert, :, row]}[self.layout]()

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """W[rows, :] of a dense layout, as (len(rows), in)."""
        return self.weight[:, rows].T if self.layout == "in_out" else self.weight[rows]


class Sites(list[DownProjection]):
    """A model's down projections in block order, with the lookups that detection, verification
    and streaming make of them: by state-dict name (a `SuperWeight` names its `param`), and by
    weight tensor (an `Entries` scalar names its tensor). Built once, never changed after."""

    @cached_property
    def _by_param(self) -> dict[str, DownProjection]:
        return {site.param: site for site in self}

    @cached_property
    def _by_tensor(self) -> dict[int, DownProjection]:
        return {id(site.weight): site for site in self}  # a streamed block's new values keep the tensor (`loading.assign`)

    def named(self, param: str) -> DownProjection:
        return self._by_param[param]

    def holding(self, tensor: torch.Tensor) -> DownProjection:
        return self._by_tensor[id(tensor)]

    def scalars(self, weights: Iterable[SuperWeight]) -> Entries:
        """Each weight's (tensor, index) entry, for `hooks.zeroed`."""
        return [(self.named(w.param).weight, tuple(w.tensor_index)) for w in weights]

    def in_layer(self, layer: int) -> list[DownProjection]:
        return [site for site in self if site.layer == layer]

    def by_layer(self, entries: Entries) -> dict[int, Entries]:
        """The entries grouped by the block of their tensor (a streamed pass changes one block at a time)."""
        grouped: dict[int, Entries] = {}
        for tensor, index in entries:
            grouped.setdefault(self.holding(tensor).layer, []).append((tensor, index))
        return grouped


@dataclass
class Architecture:
    """Where a model keeps its blocks and down projections; `mixer_only` blocks have no MLP."""

    blocks: str  # dotted path of the list of decoder blocks
    sites: Sites
    mixer_only: list[int] = field(default_factory=list)
    num_layers: int = 0

    @property
    def layers(self) -> list[int]:
        return sorted({site.layer for site in self.sites})


def family_of(config) -> str:
    """The fallback family name of a model type: an override, else its class name without suffix."""
    model_type = config.model_type
    if model_type in FAMILY_NAMES:
        return FAMILY_NAMES[model_type]
    name = (getattr(config, "architectures", None) or [""])[0]
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    return name or model_type


def discover(model: nn.Module, config, source: str) -> Architecture:
    """The model's blocks and every down projection, found by one probe forward pass."""
    text = config.get_text_config()
    lists = decoder_lists(model, config, source)
    modules = list({id(m): m for _, blocks in lists for m in blocks.modules()}.values())
    try:
        probe = probing.run(model, modules, text.vocab_size)
    except Exception as exc:  # the model cannot run a plain text forward pass
        if memory_shortage(exc):  # it can, but not here (`catalog.scanner` says so)
            raise
        raise UnsupportedArchitectureError(source, config.model_type,
                                           f"a text-only forward pass failed ({type(exc).__name__}: {first_line(exc)[:160]})") from exc
    path, blocks = _called_list(lists, probe, source, config.model_type)
    return architecture(model, path, blocks, probed_once_per_structure(blocks, probe, text.hidden_size), source, config.model_type)


def probed_once_per_structure(blocks: nn.ModuleList, probe: Probe, hidden: int) -> list[Probed]:
    """Each block as probed on the first block of its `structure`, as streaming does: the behavioural
    tests (a few module calls and a GPU sync each) once per kind of block, not 32 times over."""
    kinds = [structure(block) for block in blocks]
    first: dict[tuple, Probed] = {}
    for block, kind in zip(blocks, kinds):
        if kind not in first:
            first[kind] = Probed(block, probe, block_sites(block, hidden, probe))
    return [first[kind] for kind in kinds]


@dataclass
class Probed:
    """A block as the probe saw it, and its down projections."""

    block: nn.Module
    probe: Probe
    sites: list[nn.Module]


def architecture(model: nn.Module, path: str, blocks: nn.ModuleList, probed: list[Probed], source: str, model_type: str) -> Architecture:
    """The sites of every block, each read off a probed block of the same `structure`: the block
    itself, or (streaming, where one block at a time has weights) the first of its kind."""
    names = {id(p): name for name, p in model.named_parameters()}
    sites, mixer_only = [], []
    for layer, (block, seen) in enumerate(zip(blocks, probed)):
        paths = {id(m): name for name, m in seen.block.named_modules(remove_duplicate=False)}
        found = [_site(layer, block.get_submodule(paths[id(m)]), names, seen.probe.call(m)) for m in seen.sites]
        sites += found
        if not found:
            mixer_only.append(layer)
    if not sites:
        raise UnsupportedArchitectureError(source, model_type, "found no feed-forward output projection in any decoder block")
    return Architecture(path, Sites(sites), mixer_only, len(blocks))


def structure(block: nn.Module) -> tuple:
    """What makes two blocks compute alike: their modules' names, classes and parameter shapes."""
    return tuple((name, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                 for name, m in block.named_modules(remove_duplicate=False))


def decoder_lists(model: nn.Module, config, source: str) -> list[tuple[str, nn.ModuleList]]:
    """The module lists that may hold the decoder blocks: the outermost lists of num_hidden_layers
    entries (a vision tower's too), or of any length where the config counts its layers otherwise
    (a decoder-only model built from an encoder-decoder config)."""
    lists = _module_lists(model, config.get_text_config().num_hidden_layers) or _module_lists(model)
    if not lists:
        raise UnsupportedArchitectureError(source, config.model_type, "found no list of decoder blocks")
    return lists


def _module_lists(model: nn.Module, length: int | None = None) -> list[tuple[str, nn.ModuleList]]:
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name and (len(m) == length if length else len(m) > 1)]
    return [(name, m) for name, m in found if not any(name.startswith(other + ".") for other, _ in found)]


def _called_list(lists: list[tuple[str, nn.ModuleList]], probe: Probe, source: str, model_type: str) -> tuple[str, nn.ModuleList]:
    """The list whose every block ran in the text-only probe; the largest if several did."""
    ran = [(name, blocks) for name, blocks in lists if all(probe.call(block) for block in blocks)]
    if not ran:
        raise UnsupportedArchitectureError(source, model_type, "a text-only forward pass runs none of its lists of decoder blocks")
    path, blocks = max(ran, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    if any(probe.counts[id(block)] > 1 for block in blocks):
        raise UnsupportedArchitectureError(source, model_type, "its decoder blocks run more than once per forward pass (recurrent depth)")
    return path, blocks


def block_sites(block: nn.Module, hidden: int, probe: Probe) -> list[nn.Module]:
    """The down projections of one block, in the order they ran."""
    parents = _parents(block)
    candidates = [m for m in block.modules() if _kind(m) and _out_width(m, probe) == hidden and _projects(m, probe)]
    chosen: dict[int, nn.Module] = {}  # parent -> its last projection to run
    for module in sorted(candidates, key=lambda m: probe.call(m).order):
        if _feeds_residual(module, block, parents, probe):
            chosen[id(parents[id(module)])] = module
    by_scope: dict[int, list[nn.Module]] = {}
    for module in chosen.values():
        scope = _scope(module, block, parents, probe)
        by_scope.setdefault(id(scope), [scope]).append(module)
    confirmed = [m for scope, *found in by_scope.values() if scope in found or _confirm(scope, found, probe) for m in found]
    return sorted(confirmed, key=lambda m: probe.call(m).order)


def _kind(module: nn.Module) -> str | None:
    """How a module stores a projection it computes, or None (see `DownProjection.layout`)."""
    if isinstance(module, nn.Linear):
        return "out_in"
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D computes x @ W, W [in, out]
        return "in_out"
    down = getattr(module, "down_proj", None)
    if isinstance(down, nn.Parameter) and down.dim() == 3:
        return "experts_in_out" if getattr(module, "is_transposed", False) else "experts"
    own = dict(module.named_parameters(recurse=False))
    if isinstance(own.get("weight"), nn.Parameter) and own["weight"].dim() == 2 and not any(True for _ in module.children()):
        return "matrix"  # a 2-D weight of some other class: oriented by the widths it was called with
    return None


def _projects(module: nn.Module, probe: Probe) -> bool:
    """A 2-D weight of another class is a projection only if it maps the widths it was called with
    (Ergo's per-expert norm scales, `[E, hidden]`, are not)."""
    if _kind(module) != "matrix":
        return True
    call = probe.call(module)
    if call.input is None:
        return False
    widths = (call.input.shape[-1], call.out.shape[-1])
    return tuple(module.weight.shape) in (widths, widths[::-1])


def _out_width(module: nn.Module, probe: Probe) -> int | None:
    call = probe.call(module)
    out = call.out if call else None
    return out.shape[-1] if out is not None and out.dim() else None


def _parents(block: nn.Module) -> dict[int, nn.Module]:
    return {id(child): parent for parent in block.modules() for child in parent.children()}


def _ancestors(module: nn.Module, block: nn.Module, parents: dict[int, nn.Module]) -> list[nn.Module]:
    """From the module's parent up to (not including) the block."""
    chain = []
    while id(module) in parents and parents[id(module)] is not block:
        module = parents[id(module)]
        chain.append(module)
    return chain


def _scope(module: nn.Module, block: nn.Module, parents: dict[int, nn.Module], probe: Probe) -> nn.Module:
    """The outermost module above `module` (itself included) through which every step is token-wise."""
    scope = module
    for ancestor in _ancestors(module, block, parents):
        if not probe.token_wise(ancestor):
            break
        scope = ancestor
    return scope


def _feeds_residual(module: nn.Module, block: nn.Module, parents: dict[int, nn.Module], probe: Probe) -> bool:
    """Inside an MLP (a token-wise module around it), or in an MLP written into a block. A square
    projection alone in its token-wise module is another mixer's output (BERT's attention output)."""
    scope = _scope(module, block, parents, probe)
    if scope is not module:
        call = probe.call(module)
        lone = not any(_kind(m) for m in scope.modules() if m is not module)
        return not (lone and not _kind(module).startswith("experts") and call.input.shape[-1] == call.out.shape[-1])
    parent = parents[id(module)]
    mixing_child = any(probe.call(c) and any(True for _ in c.parameters()) and not probe.token_wise(c)
                       for c in parent.children() if c is not module)
    return mixing_child and _fed_by_sibling(module, parent, probe)


def _fed_by_sibling(module: nn.Module, parent: nn.Module, probe: Probe) -> bool:
    """A projection of the hidden state ran just before, as wide as this one's input (OPT's fc1)."""
    call = probe.call(module)
    width = call.input.shape[-1] if call.input is not None else None
    before = [c for c in parent.children() if c is not module and _kind(c) and probe.call(c) and probe.call(c).order < call.order]
    if not before:
        return False
    last = probe.call(max(before, key=lambda c: probe.call(c).order))
    return width is not None and last.input is not None and last.out.shape[-1] == width and last.input.shape[-1] == call.out.shape[-1]


def _confirm(scope: nn.Module, found: list[nn.Module], probe: Probe) -> bool:
    """The found projections are all the feed-forward part adds: with their outputs zeroed, it adds
    nothing; or (where it adds the residual itself, BERT's and BLOOM's post-norm MLPs) with their
    outputs held, a change of its input changes nothing."""
    call = probe.call(scope)
    zero = _recall(scope, call, found, lambda i, out: _replaced(out, torch.zeros_like))
    if zero is not None and bool((zero.float().abs().max() <= 1e-5 * (call.out.float().abs().max() + 1)).item()):
        return True
    held = [probe.call(m).output for m in found]
    moved = _recall(scope, call, found, lambda i, out: held[i], shift=True)
    return moved is not None and torch.allclose(moved.float(), call.out.float(), rtol=1e-4, atol=1e-5)


def _recall(scope: nn.Module, call: probing.Call, found: list[nn.Module], replace, shift: bool = False) -> torch.Tensor | None:
    """Call `scope` again on its probed input (shifted by one where `shift`), each found module's
    output replaced by `replace(i, output)`."""
    args = (call.args[0] + 1.0, *call.args[1:]) if shift and call.args else call.args
    try:
        with hooked((m, lambda mod, args, out, i=i: replace(i, out)) for i, m in enumerate(found)), torch.no_grad():
            return probing.first_tensor(scope(*args, **call.kwargs))
    except Exception:  # a module that cannot be called again on its own recorded input is not confirmed
        return None


def _replaced(out, make):
    if isinstance(out, torch.Tensor):
        return make(out)
    return type(out)(make(o) if isinstance(o, torch.Tensor) else o for o in out)


def _site(layer: int, module: nn.Module, names: dict[int, str], call: probing.Call) -> DownProjection:
    """The site of `module`, oriented by the probed call of a module of the same structure."""
    kind = _kind(module)
    if kind.startswith("experts"):
        weight = module.down_proj
        if not hasattr(module, "is_transposed"):  # outside transformers' interface: the shape tells
            kind = "experts_in_out" if weight.shape[1] != call.out.shape[-1] else "experts"
        experts = "pre_routed" if len(call.args) + len(call.kwargs) == 1 else "interface"
        return DownProjection(layer, names[id(weight)], module, weight, kind, experts)
    weight = module.weight
    if kind == "matrix":  # stored [in, out] only where the widths say so; a square one reads as nn.Linear's
        width_in, width_out = call.input.shape[-1], call.out.shape[-1]
        kind = "in_out" if width_in != width_out and tuple(weight.shape) == (width_in, width_out) else "out_in"
    return DownProjection(layer, names[id(weight)], module, weight, kind)
