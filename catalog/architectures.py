"""Find each decoder block's feed-forward output projection by structure, confirmed by behaviour.

Nothing is registered per model type. A tiny forward pass (`catalog.probe`) shows which modules
run; the decoder blocks are the model's list of `num_hidden_layers` modules that ran (for a
multimodal checkpoint, the language model's: the probe is text only). In each block, a *down
projection* is a projection (nn.Linear, GPT-2's Conv1D, another 2-D weight, fused experts stored
`[E, out, in]` or `[E, in, out]` behind transformers' experts interface, a 3-D weight of any
class called on routed rows grouped by expert, or a 2-D weight of experts stacked `[E * in, out]`
that its module is called with a view of once per expert, `catalog.experts`) whose output is
hidden-size wide and that sits inside the block's feed-forward part:

- the outermost token-wise module above it is bigger than the projection itself (the MLP or
  MoE block around it), and zeroing the outputs of the projections found in it zeroes that
  module's output (so they are all of what it adds to the residual stream); token-wise here
  allows a look at the token before (`LOOK_BACK`: RWKV's channel mix shifts it in); or
- the MLP is written into the block itself (OPT's fc1/fc2): the projection is the block's own
  child, the block mixes tokens through another child (attention), and a sibling turned the
  hidden state into the projection's input just before.

Of projections with one parent, the last to run is the output (an up projection as wide as the
hidden state feeds it), unless a gate as wide runs after it (RWKV's receptance): then it is the
last whose output, zeroed, zeroes the parent's. A fused experts module is an output of its own
(routed and shared experts side by side). Grouped experts return rows, not tokens: they qualify
only inside a token-wise parent whose output is their rows, recomputed and routed back to their
tokens (so JetMoE's mixture of attention experts, whose rows its attention combines, does not); sliced experts
(DBRX's) return rows too, one call per expert, and qualify the same way. A block list may hold
the feed-forward parts themselves (XLM's `ffns`). Attention, state-space and convolution
mixers are not token-wise, so their output projections never qualify; a block without a
feed-forward part (hybrids) is recorded as such, and so are blocks that a text-only pass does
not run (cross-attention to an image). Blocks may share one down projection's weight (Zamba's
shared block: `Sites`); blocks calling one module object, or run more than once, are refused.
What structure cannot tell is kept in two places: family
display names (`FAMILY_NAMES`), and the experts modules that keep their own calling convention
(`catalog.experts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from catalog import experts as routed_experts
from catalog import probe as probing
from catalog.errors import NonFiniteError, UnsupportedArchitectureError, first_line, memory_shortage
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

ROUTED = ("experts_grouped", "experts_sliced")  # experts whose rows their parent routes to tokens
LOOK_BACK = 1  # tokens before its own that a feed-forward part may mix in (RWKV's token shift), and no more
Entries = list[tuple[torch.Tensor, tuple[int, ...]]]  # (weight tensor, index into it) of scalars


@dataclass(frozen=True)
class DownProjection:
    """One down projection of one layer and how its weight is stored.

    layout: "out_in" (nn.Linear `[out, in]`), "in_out" (Conv1D, stored transposed), "experts"
    (fused `[E, out, in]`), "experts_in_out" (fused `[E, in, out]`) or "experts_stacked_in_out"
    (2-D `[E * in, out]`: each expert's `[in, out]` rows in turn, `stacked` rows each; DBRX's w2).
    `experts` says how the per-expert inputs of a fused module are recomputed (`catalog.experts`);
    grouped and sliced experts also need their `routing` module, the parent that sends them tokens
    and sums their rows per token.
    """

    layer: int
    param: str  # state-dict name of the weight
    module: nn.Module
    weight: torch.Tensor
    layout: str
    experts: str | None = None  # "interface" (transformers' experts interface), "pre_routed", "weighted", "grouped" or "sliced"
    routing: nn.Module | None = None  # grouped or sliced experts' parent
    stacked: int | None = None  # rows per expert of a stacked layout

    @property
    def fused(self) -> bool:
        return self.layout.startswith("experts")

    @property
    def by_expert(self) -> torch.Tensor:
        """A fused weight as `[E, ...]`, one matrix per expert as stored (a stacked one viewed so)."""
        return self.weight.unflatten(0, (-1, self.stacked)) if self.stacked else self.weight

    @property
    def per_token(self) -> nn.Module:
        """The module whose output is what this site adds at each token: its own, or where its rows
        are routed copies of tokens (grouped experts), its routing module's."""
        return self.module if self.routing is None else self.routing

    def index(self, row: int, col: int, expert: int | None = None) -> tuple[int, ...]:
        """Index into the stored tensor of the paper's W[row, col] (row = output channel)."""
        if self.layout == "experts_stacked_in_out":
            return expert * self.stacked + col, row
        return {"out_in": (row, col), "in_out": (col, row), "experts": (expert, row, col),
                "experts_in_out": (expert, col, row)}[self.layout]

    def out_row(self, row: int, expert: int | None = None) -> torch.Tensor:
        """W[row, :] as a vector over input channels, whatever the storage layout."""
        return {"out_in": lambda: self.weight[row], "in_out": lambda: self.weight[:, row],
                "experts": lambda: self.weight[expert, row], "experts_in_out": lambda: self.weight[expert, :, row],
                "experts_stacked_in_out": lambda: self.by_expert[expert, :, row]}[self.layout]()

    @property
    def widths(self) -> tuple[int, int]:
        """(input, output) channels of one (expert's) projection, whatever the storage layout."""
        *_, a, b = self.weight.shape
        if self.stacked:  # [E * in, out]
            return self.stacked, b
        return (b, a) if self.layout in ("out_in", "experts") else (a, b)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """W[rows, :] of a dense layout, as (len(rows), in)."""
        return self.weight[:, rows].T if self.layout == "in_out" else self.weight[rows]


class Sites(list[DownProjection]):
    """A model's down projections in block order, with the lookups that detection, verification
    and streaming make of them: by state-dict name (a `SuperWeight` names its `param`), and by
    weight tensor (an `Entries` scalar names its tensor). Built once, never changed after.

    Blocks may share a weight (Zamba's shared transformer block, called from several layers, each
    call with its own modules): each call is a site of its layer, and by name or tensor the
    lookups give the first, the lowest block that a change of the weight changes."""

    @cached_property
    def _by_param(self) -> dict[str, DownProjection]:
        return self._first(lambda site: site.param)

    @cached_property
    def _by_tensor(self) -> dict[int, DownProjection]:
        return self._first(lambda site: id(site.weight))  # a streamed block's new values keep the tensor (`loading.assign`)

    def _first(self, key: Callable[[DownProjection], object]) -> dict:
        first: dict = {}
        for site in self:
            first.setdefault(key(site), site)
        return first

    @cached_property
    def distinct(self) -> list[DownProjection]:
        """The first site of each weight: what counts and changes each weight once (control B, quantization)."""
        return list(self._by_tensor.values())

    @cached_property
    def shared(self) -> dict[str, list[int]]:
        """Each weight that several blocks share: its name -> their layers."""
        return {first.param: layers for first in self.distinct if len(layers := [s.layer for s in self if s.weight is first.weight]) > 1}

    def named(self, param: str) -> DownProjection:
        return self._by_param[param]

    def holding(self, tensor: torch.Tensor) -> DownProjection:
        return self._by_tensor[id(tensor)]

    def sharing(self, param: str) -> list[DownProjection]:
        """Every site of the weight `param` names: one, or one per block that shares it."""
        return [site for site in self if site.param == param]

    def of(self, weight: SuperWeight) -> DownProjection:
        """The site a weight was found at: of its param's, the one of its layer (else the first)."""
        return next((site for site in self.sharing(weight.param) if site.layer == weight.layer), None) or self.named(weight.param)

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
    """Where a model keeps its blocks and down projections; `mixer_only` blocks have no MLP, `unrun`
    blocks do not run in a text-only pass (Mllama's cross-attention layers, which attend to an image)."""

    blocks: str  # dotted path of the list of decoder blocks
    sites: Sites
    mixer_only: list[int] = field(default_factory=list)
    num_layers: int = 0
    unrun: list[int] = field(default_factory=list)

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
    hidden = getattr(text, "hidden_size", None) or _out_width(blocks[0], probe)  # else only its parts' configs name it
    return architecture(model, path, blocks, probed_once_per_structure(blocks, probe, hidden), source, config.model_type)


def probed_once_per_structure(blocks: nn.ModuleList, probe: Probe, hidden: int) -> list[Probed]:
    """Each block as probed on the first block of its `structure`, as streaming does: the behavioural
    tests (a few module calls and a GPU sync each) once per kind of block, not 32 times over."""
    kinds = [(structure(block), probe.call(block) is None) for block in blocks]
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
    sites, mixer_only, unrun = [], [], []
    for layer, (block, seen) in enumerate(zip(blocks, probed)):
        paths = {id(m): name for name, m in seen.block.named_modules(remove_duplicate=False)}
        found = [_block_site(layer, block, paths[id(m)], names, seen.probe, m) for m in seen.sites]
        sites += found
        if seen.probe.call(seen.block) is None:
            unrun.append(layer)
        elif not found:
            mixer_only.append(layer)
    if not sites:
        cause = _non_finite(path, blocks, probed)
        if cause:  # no behavioural test holds on NaNs: it is the weights, not the architecture
            raise NonFiniteError(cause)
        raise UnsupportedArchitectureError(source, model_type, "found no feed-forward output projection in any decoder block")
    _check_own_modules(sites, source, model_type)
    return Architecture(path, Sites(sites), mixer_only, len(blocks), unrun)


def _non_finite(path: str, blocks: nn.ModuleList, probed: list[Probed]) -> str | None:
    """What made the probe's hidden states NaN or inf, if they were: the first weight of the first
    such block holding NaN or inf (a corrupt file), else that block's output (a dtype overflowing)."""
    for layer, (block, seen) in enumerate(zip(blocks, probed)):
        call = seen.probe.call(block)
        out = call.out if call else None
        if out is not None and out.is_floating_point() and not torch.isfinite(out).all():
            bad = non_finite_parameter(block)
            return f"a value of {path}.{layer}.{bad}" if bad else f"the output of block {layer} on the probe"
    return None


def non_finite_parameter(module: nn.Module) -> str | None:
    """The first of the module's parameters in memory holding NaN or inf (a corrupt file, a misread quantization type)."""
    return next((name for name, p in module.named_parameters() if not p.is_meta and not torch.isfinite(p).all()), None)


def _check_own_modules(sites: list[DownProjection], source: str, model_type: str) -> None:
    """Refuse blocks that call one module object (not only one weight): a module's calls from
    several layers would be one site's, and its hooks could not tell the layers apart."""
    first: dict[int, DownProjection] = {}
    for site in sites:
        if (seen := first.setdefault(id(site.module), site)) is not site:
            raise UnsupportedArchitectureError(source, model_type, f"layers {seen.layer} and {site.layer} call one feed-forward "
                                                                   f"module ({seen.param}); such shared blocks are not scanned")


def structure(block: nn.Module) -> tuple:
    """What makes two blocks compute alike: their modules' names, classes and parameter shapes."""
    return tuple((name, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                 for name, m in block.named_modules(remove_duplicate=False))


def decoder_lists(model: nn.Module, config, source: str) -> list[tuple[str, nn.ModuleList]]:
    """The module lists that may hold the decoder blocks: the outermost lists of num_hidden_layers
    entries (a vision tower's too), or of any length where the config counts its layers otherwise
    (a decoder-only model built from an encoder-decoder config) or names no depth (only its parts'
    configs do)."""
    lists = _module_lists(model, getattr(config.get_text_config(), "num_hidden_layers", None)) or _module_lists(model)
    if not lists:
        raise UnsupportedArchitectureError(source, config.model_type, "found no list of decoder blocks")
    return lists


def _module_lists(model: nn.Module, length: int | None = None) -> list[tuple[str, nn.ModuleList]]:
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name and (len(m) == length if length else len(m) > 1)]
    return [(name, m) for name, m in found if not any(name.startswith(other + ".") for other, _ in found)]


def _called_list(lists: list[tuple[str, nn.ModuleList]], probe: Probe, source: str, model_type: str) -> tuple[str, nn.ModuleList]:
    """The list whose every block ran in the text-only probe, the largest if several did; else the
    largest of those where some did (blocks that need an image are skipped without one)."""
    ran = [(name, blocks) for name, blocks in lists if any(probe.call(block) for block in blocks)]
    if not ran:
        raise UnsupportedArchitectureError(source, model_type, "a text-only forward pass runs none of its lists of decoder blocks")
    path, blocks = max(ran, key=lambda item: (all(probe.call(block) for block in item[1]),
                                              sum(p.numel() for p in item[1].parameters())))
    if any(probe.counts.get(id(block), 0) > 1 for block in blocks):
        raise UnsupportedArchitectureError(source, model_type, "its decoder blocks run more than once per forward pass (recurrent depth)")
    return path, blocks


def block_sites(block: nn.Module, hidden: int, probe: Probe) -> list[nn.Module]:
    """The down projections of one block, in the order they ran."""
    probe.align(block, hidden)
    parents = _parents(block)
    candidates = [m for m in block.modules() if _kind(m, probe.call(m)) and _out_width(m, probe) == hidden and _projects(m, probe)]
    owned: dict[int, tuple[nn.Module, list[nn.Module]]] = {}  # owner -> its projections, in the order they ran
    for module in sorted(candidates, key=lambda m: probe.call(m).order):
        if _feeds_residual(module, block, parents, probe):
            owner = _owner(module, parents, probe)
            owned.setdefault(id(owner), (owner, []))[1].append(module)
    by_scope: dict[int, list[nn.Module]] = {}
    for module in (_output(owner, found, probe) for owner, found in owned.values()):
        scope = _scope(module, block, parents, probe)
        by_scope.setdefault(id(scope), [scope]).append(module)
    confirmed = [m for scope, *found in by_scope.values() if scope in found or _confirm(scope, found, probe) for m in found]
    return sorted(confirmed, key=lambda m: probe.call(m).order)


def _output(owner: nn.Module, found: list[nn.Module], probe: Probe) -> nn.Module:
    """Which of an owner's hidden-wide projections is its output: the last to run, unless a gate as
    wide runs after it (RWKV's receptance): then the last whose output, zeroed, zeroes the owner's."""
    if len(found) > 1:
        for module in reversed(found):
            if _adds_nothing_without(owner, [module], probe):
                return module
    return found[-1]


def _owner(module: nn.Module, parents: dict[int, nn.Module], probe: Probe) -> nn.Module:
    """Whose last projection to run a down projection is: its parent's (an up projection as wide as
    the hidden state runs before it), or its own for a fused experts module, which holds its up
    projections itself (Inkling's routed and shared experts side by side in one MoE block)."""
    return module if _kind(module, probe.call(module)).startswith("experts") else parents[id(module)]


def _kind(module: nn.Module, call: probing.Call | None = None) -> str | None:
    """How a module stores a projection it computes, or None (see `DownProjection.layout`); a module
    `call`ed with a view of its own parameter may hold experts' stacked slices."""
    if isinstance(module, nn.Linear):
        return "out_in"
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D computes x @ W, W [in, out]
        return "in_out"
    down = getattr(module, "down_proj", None)
    if isinstance(down, nn.Parameter) and down.dim() == 3:
        return "experts_in_out" if getattr(module, "is_transposed", False) else "experts"
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    if isinstance(weight, nn.Parameter) and not any(True for _ in module.children()):
        if weight.dim() == 2:
            return "matrix"  # a 2-D weight of some other class: oriented by the widths it was called with
        if weight.dim() == 3 and not isinstance(module, nn.modules.conv._ConvNd):
            return "experts_grouped"  # experts of some class, if called on rows grouped by expert (`_projects`)
    if call is not None and call.views and not any(True for child in module.children() for _ in child.parameters()):
        return "experts_sliced"  # if one of the views is a down projection's (`_projects`); an activation child is no matter
    return None


def _projects(module: nn.Module, probe: Probe) -> bool:
    """A 2-D weight of another class is a projection only if it maps the widths it was called with
    (Ergo's per-expert norm scales, `[E, hidden]`, are not); a 3-D one only if, besides, it was
    called on rows grouped by expert (`experts.grouped_sizes`); experts' slices only if one is a down
    projection's (`experts.sliced_down`)."""
    call = probe.call(module)
    kind = _kind(module, call)
    if kind == "experts_sliced":
        return _down_view(module, probe) is not None
    if kind not in ("matrix", "experts_grouped"):
        return True
    if call.input is None:
        return False
    widths = (call.input.shape[-1], call.out.shape[-1])
    if kind == "experts_grouped" and routed_experts.grouped_sizes(module.weight, call.args, call.kwargs) is None:
        return False
    return tuple(module.weight.shape[-2:]) in (widths, widths[::-1])


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
    """The outermost module above `module` (itself included) through which every step is token-wise:
    the block too where it is a feed-forward part itself (`_feed_forward_block`)."""
    scope = module
    for ancestor in _ancestors(module, block, parents):
        if not probe.token_wise(ancestor, LOOK_BACK):
            return scope
        scope = ancestor
    return block if _feed_forward_block(block, probe) else scope


def _feed_forward_block(block: nn.Module, probe: Probe) -> bool:
    """Every child that ran, and the block, are token-wise (XLM keeps its feed-forward parts in a
    list of their own). The block's own test is not enough: the residual it adds can carry a
    massive activation that outweighs what its attention mixes in."""
    return all(probe.token_wise(c) for c in block.children() if probe.call(c)) and probe.token_wise(block)


def _feeds_residual(module: nn.Module, block: nn.Module, parents: dict[int, nn.Module], probe: Probe) -> bool:
    """Inside an MLP (a token-wise module around it), or in an MLP written into the block itself. A
    square projection alone in its token-wise module is another mixer's output (BERT's attention output)."""
    scope = _scope(module, block, parents, probe)
    if _kind(module, probe.call(module)) in ROUTED:  # its rows reach the residual stream only through a parent that routes them
        return scope is not module and _routed(module, parents[id(module)], probe)
    if scope is not module:
        call = probe.call(module)
        lone = not any(_kind(m) for m in scope.modules() if m is not module)
        return not (lone and not _kind(module).startswith("experts") and call.input.shape[-1] == call.out.shape[-1])
    parent = parents[id(module)]
    if parent is not block:  # a projection inside a mixer (attention's output, Inkling's beside its short convolutions)
        return False
    mixing_child = any(probe.call(c) and any(True for _ in c.parameters()) and not probe.token_wise(c)
                       for c in parent.children() if c is not module)
    return mixing_child and _fed_by_sibling(module, parent, probe)


def _routed(module: nn.Module, parent: nn.Module, probe: Probe) -> bool:
    """Grouped or sliced experts' rows are what their parent adds: recomputed from the weight and put
    where the parent puts them (`experts.routing`), they give its output, up to its offset (a bias)."""
    outer = probe.call(parent)
    site = _site(0, module, {}, probe.call(module), parent, _down_view(module, probe))
    try:
        calls, out = _calls_within(parent, outer, module)
        routing = routed_experts.routing(site, outer.args, outer.kwargs, [output for *_, output in calls])
        total = routed_experts.recompute(site, calls, routing).total
    except Exception:  # a parent that cannot be called again on its own recorded input is not confirmed
        return False
    out = out.reshape(-1, out.shape[-1]).float()
    if total.shape != out.shape:
        return False
    rounding = 4 * torch.finfo(outer.out.dtype).eps * out.abs().max().item()  # of the parent's sums, in its dtype
    return (total + routing.offset - out).abs().max().item() <= rounding + 1e-4 * total.abs().max().item() + 1e-6


def _down_view(module: nn.Module, probe: Probe) -> tuple[int, str, int] | None:
    """Which argument of experts' slices is the down weight's (`experts.sliced_down`), asked once."""
    call = probe.call(module)
    return probe.answer("down view", module, lambda: routed_experts.sliced_down(module, call.args, call.kwargs, call.out, call.views))


def _calls_within(parent: nn.Module, outer: probing.Call, module: nn.Module) -> tuple[list[routed_experts.ModuleCall], torch.Tensor]:
    """The module's calls within its parent called again on its probed input (live: a slice of a
    weight is a view of it there, not a copy), and the parent's output."""
    calls = []
    with hooked([(module, lambda mod, args, kwargs, output: calls.append((args, kwargs, probing.first_tensor(output))))],
                with_kwargs=True), torch.no_grad():
        out = probing.first_tensor(parent(*outer.args, **outer.kwargs))
    return calls, out


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
    nothing (returns zero, a constant where it adds a bias after them, JetMoE's MoE, or its input
    where it adds the residual itself, CPM-Ant's pre-norm FFN block); or (BERT's and BLOOM's
    post-norm MLPs) with their outputs held, a change of its input changes nothing."""
    if _adds_nothing_without(scope, found, probe):
        return True
    call = probe.call(scope)
    held = [probe.call(m).output for m in found]
    moved = _recall(scope, call, found, lambda i, out: held[i], shift=True)
    return moved is not None and _same_but_rounding(moved, call.out)


def _same_but_rounding(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal but for rounding: to 1e-4, or within two of the dtype's steps at the largest value
    (bfloat16 keeps 8 bits: XLNet's post-norm feed-forward part, its input shifted by one, gives
    its output back 0.006 of its largest value apart)."""
    eps = torch.finfo(expected.dtype).eps if expected.is_floating_point() else 0.0
    got, expected = got.float(), expected.float()
    return torch.allclose(got, expected, rtol=1e-4, atol=1e-5) or bool(
        ((got - expected).abs().max() <= 2 * eps * expected.abs().max()).item())


def _adds_nothing_without(scope: nn.Module, found: list[nn.Module], probe: Probe) -> bool:
    """With the found projections' outputs zeroed, `scope` returns zero, a constant or its input."""
    call = probe.call(scope)
    zero = _recall(scope, call, found, lambda i, out: _replaced(out, torch.zeros_like))
    if zero is None:
        return False
    rows = zero.reshape(-1, zero.shape[-1])
    constant = rows[:1].expand_as(rows).reshape(zero.shape)
    return any(_near(zero, base, call.out) for base in (constant, call.input))


def _near(value: torch.Tensor, base: torch.Tensor | None, out: torch.Tensor) -> bool:
    """`value` equals `base` up to rounding on the scale of the module's output `out`."""
    if base is None or base.shape != value.shape:
        return False
    return bool(((value.float() - base.float()).abs().max() <= 1e-5 * (out.float().abs().max() + 1)).item())


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


def _block_site(layer: int, block: nn.Module, path: str, names: dict[int, str], probe: Probe, like: nn.Module) -> DownProjection:
    """The site of the module at `path` in `block`, with its parent where that routes its rows,
    as `probe` saw the module `like` it (of the same structure)."""
    module, call = block.get_submodule(path), probe.call(like)
    kind = _kind(module, call)
    routing = block.get_submodule(path.rpartition(".")[0]) if kind in ROUTED else None
    return _site(layer, module, names, call, routing, _down_view(like, probe) if kind == "experts_sliced" else None)


def _experts_layout(weight: torch.Tensor, call: probing.Call) -> str:
    """Fused experts outside transformers' interface: `[E, out, in]` unless the widths say `[E, in, out]`."""
    return "experts_in_out" if weight.shape[1] != call.out.shape[-1] else "experts"


def _site(layer: int, module: nn.Module, names: dict[int, str], call: probing.Call, routing: nn.Module | None = None,
          view: tuple[int, str, int] | None = None) -> DownProjection:
    """The site of `module`, oriented by the probed call of a module of the same structure (experts'
    slices: by which argument is the down weight's `view`)."""
    kind = _kind(module, call)
    if kind == "experts_sliced":
        position, name, _ = view
        weight = getattr(module, name)
        stacked = (*call.args, *call.kwargs.values())[position].shape[0]
        return DownProjection(layer, names.get(id(weight), ""), module, weight, "experts_stacked_in_out", "sliced", routing, stacked)
    if kind.startswith("experts"):
        grouped = kind == "experts_grouped"
        weight = module.weight if grouped else module.down_proj
        if not hasattr(module, "is_transposed"):  # outside transformers' interface: the shape tells
            kind = _experts_layout(weight, call)
        experts = "grouped" if grouped else _convention(call, weight.shape[0])
        return DownProjection(layer, names.get(id(weight), ""), module, weight, kind, experts, routing)
    weight = module.weight
    if kind == "matrix":  # stored [in, out] only where the widths say so; a square one reads as nn.Linear's
        width_in, width_out = call.input.shape[-1], call.out.shape[-1]
        kind = "in_out" if width_in != width_out and tuple(weight.shape) == (width_in, width_out) else "out_in"
    return DownProjection(layer, names[id(weight)], module, weight, kind)


def _convention(call: probing.Call, count: int) -> str:
    """How a fused experts module of `count` experts is called (`catalog.experts`): on tokens already
    routed and scaled (one argument), on every token with a float weight per token and expert (two),
    or through transformers' experts interface (hidden states, expert indices, router weights)."""
    args = [*call.args, *call.kwargs.values()]
    if len(args) == 1:
        return "pre_routed"
    weights = args[1]
    if len(args) == 2 and isinstance(weights, torch.Tensor) and weights.is_floating_point() and weights.shape[-1] == count:
        return "weighted"
    return "interface"
