"""Each routed expert's down projection, recomputed from a fused experts module.

A hook on a fused experts module sees only what the module returns, so the per-expert inputs
`x_e`, their down outputs and the router-weighted sum of those are rebuilt from the module's own
parameters, as its forward computes them:

- "interface": transformers' experts interface (`use_experts_implementation`): called with
  (hidden_states, top_k_index, top_k_weights); the up (or fused gate-up) projection stored
  `[E, out, in]` or, where `is_transposed`, `[E, in, out]`, optional biases, and the module's own
  `_apply_gate` (which knows concatenated and interleaved gate/up layouts, gpt-oss's clamp).
- "pre_routed" (Llama 4): called with the hidden states already repeated per expert and scaled by
  the router, `(E * tokens, hidden)`; gate-up stored `[E, hidden, 2 * inter]`, gate first.
- "grouped" (JetMoE): a module of any class holding a 3-D `weight` (`[E, out, in]` or `[E, in, out]`),
  called on the routed rows sorted by expert and the number of rows of each expert, `(inputs (rows,
  in), sizes)` (`grouped_sizes` tells the call apart); it returns each row's down output, so the
  per-expert inputs are its own. Which token a row is a copy of, and the router weight it is added
  with, live in its parent (the token-wise module that routes the tokens and sums the rows back per
  token): `routing` reads both off re-calls of the parent with the rows replaced, for any parent
  whose output is affine in them (a router-weighted scatter-add is; discovery checks it).
- "weighted" (Inkling's shared experts): called with (hidden_states, weights): every expert runs
  on every token, weighted by `weights` (tokens, E); gate and up stored apart, `[E, inter, hidden]`.
- "sliced" (DBRX): a module of any class holding its experts' down weights stacked in one 2-D
  parameter `[E * in, out]`, called once per expert with a view of that expert's rows `[in, out]`
  as an argument (`sliced_down` tells which argument: the one whose column j alone makes output
  channel j). It returns that expert's rows; their tokens and router weights come from the parent
  as for grouped experts, the calls in the order the parent made them. The down input is never an
  argument: re-calls with the slice replaced by unit matrices read it off the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from catalog.errors import UnsupportedArchitectureError
from catalog.patches import hooked
from catalog.probe import first_tensor, own_views

if TYPE_CHECKING:
    from catalog.architectures import DownProjection

Routed = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]  # expert, token indices, router weights, inputs (n, inter)
ModuleCall = tuple[tuple, dict, torch.Tensor]  # args, kwargs, output as a hook sees them


@dataclass
class Routing:
    """Where the parent of a grouped experts module put each row of one call: the token whose
    output it is added to, with what weight, and what the parent outputs besides the rows (a bias
    added after the sum: JetMoE's)."""

    tokens: torch.Tensor  # (rows,) long, flat over batch and sequence
    gains: torch.Tensor  # (rows,) float32
    offset: torch.Tensor  # (tokens, hidden) float32: the parent's output with every row zeroed


def down_inputs(site: DownProjection, calls: list[ModuleCall], routing: Routing | None = None) -> Iterator[Routed]:
    """Each expert that received tokens: which tokens, with what router weight, and its down input
    (`calls`: the module's calls within one call of its parent; one, except for sliced experts)."""
    args, kwargs, _ = calls[0]
    if site.experts == "sliced":
        yield from _in_routed_order((_sliced_input(site, a, k) for a, k, _ in calls), routing)
    elif site.experts == "grouped":
        inputs = (*args, *kwargs.values())[0]
        yield from _in_routed_order(enumerate(inputs.split(grouped_sizes(site.weight, args, kwargs))), routing)
    elif site.experts == "pre_routed":
        yield from _pre_routed(site.module, _arguments(args, kwargs, ("hidden_states",))[0])
    elif site.experts == "weighted":
        yield from _weighted(site.module, *(args + tuple(kwargs.values()))[:2])
    else:
        yield from _interface(site.module, *_arguments(args, kwargs, ("hidden_states", "top_k_index", "top_k_weights")))


def grouped_sizes(weight: torch.Tensor, args: tuple, kwargs: dict) -> list[int] | None:
    """The rows of each expert where a call has the grouped convention, else None: two arguments,
    the inputs (rows, in) and one count per expert of `weight` (a list or an integer tensor) that
    add up to the rows."""
    values = (*args, *kwargs.values())
    if len(values) != 2 or not isinstance(values[0], torch.Tensor) or values[0].dim() != 2:
        return None
    sizes = values[1]
    if isinstance(sizes, torch.Tensor) and sizes.dim() == 1 and not sizes.is_floating_point():
        sizes = sizes.tolist()
    if not isinstance(sizes, (list, tuple)) or not all(isinstance(n, int) for n in sizes):
        return None
    return list(sizes) if len(sizes) == weight.shape[0] and sum(sizes) == values[0].shape[0] else None


def routing(site: DownProjection, args: tuple, kwargs: dict, outputs: list[torch.Tensor]) -> Routing:
    """Where `site.routing`, called on (args, kwargs), puts each of the experts' output rows (the
    `outputs` of its calls of the experts module, (rows, hidden) each): it is called again with the
    rows replaced, by zeros (its offset), then by unit rows, `hidden` rows at a time (row r: 1 in its
    own channel), whose channel shows the token it is added to and its weight."""
    rows = torch.cat([out.reshape(-1, out.shape[-1]) for out in outputs])
    sizes = [out.reshape(-1, out.shape[-1]).shape[0] for out in outputs]
    offset, responses = _unit_responses(rows, lambda replaced: _recalled(site, args, kwargs, replaced, sizes))
    tokens = [added.abs().argmax(0) for added in responses]  # each (tokens, chunk): a row's one non-zero is its token
    gains = [added.gather(0, token[None])[0] for added, token in zip(responses, tokens)]
    return Routing(torch.cat(tokens), torch.cat(gains), offset)


def _unit_responses(like: torch.Tensor, respond: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`respond`'s answer to zeros shaped `like` (n, width), and what unit matrices add to it, `width`
    rows at a time (row start + k: 1 in column k), as (answers' rows, chunk) per chunk: how each row
    of `like` reaches the answer, read off a linear (or affine) map."""
    count, width = like.shape
    offset = respond(torch.zeros_like(like))
    responses = []
    for start in range(0, count, width):
        chunk = torch.arange(min(width, count - start), device=like.device)
        unit = torch.zeros_like(like)
        unit[start + chunk, chunk] = 1
        responses.append((respond(unit) - offset)[:, : len(chunk)])
    return offset, responses


def _recalled(site: DownProjection, args: tuple, kwargs: dict, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The routing module's output (tokens, hidden), float32, with the experts' calls returning `rows`
    in turn (`sizes` rows each)."""
    returned = iter(rows.split(sizes))
    with hooked([(site.module, lambda module, inputs, output: next(returned))]), torch.no_grad():
        out = first_tensor(site.routing(*args, **kwargs))
    return out.reshape(-1, out.shape[-1]).float()


def sliced_down(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor,
                views: tuple[tuple[int, str, int], ...]) -> tuple[int, str, int] | None:
    """Of the call's arguments that are views of the module's own 2-D parameters (`own_views`), the
    one that is a down projection's slice `[in, out]`: a block of whole rows of a parameter as wide
    as the output, at a multiple of its size, and the output's channel j depends on its column j
    alone (ones there change that channel only). The (position, parameter name, expert), or None."""
    values = (*args, *kwargs.values())
    width = output.shape[-1]
    for position, name, offset in views:
        param, view = getattr(module, name), values[position]
        if param.dim() != 2 or view.dim() != 2 or view.shape[1] != width or param.shape[1] != width \
                or param.shape[0] % view.shape[0] or offset % view.numel():
            continue
        unit = torch.zeros_like(view)
        unit[:, width - 1] = 1  # every input channel into the last output channel
        added = _called(module, args, kwargs, position, unit) - _called(module, args, kwargs, position, torch.zeros_like(view))
        if added[:, width - 1].abs().max() > 0 and added[:, : width - 1].abs().max() == 0:
            return position, name, offset // view.numel()
    return None


def _called(module: nn.Module, args: tuple, kwargs: dict, position: int, replaced: torch.Tensor) -> torch.Tensor:
    """The module called again with the argument at `position` (among the args, then the kwargs'
    values) replaced: its output (rows, out), float32."""
    values = [*args, *kwargs.values()]
    values[position] = replaced
    with torch.no_grad():
        out = first_tensor(module(*values[: len(args)], **dict(zip(kwargs, values[len(args):]))))
    return out.reshape(-1, out.shape[-1]).float()


@dataclass
class Recomputed:
    """One call of an experts module, rebuilt: each routed expert, its down outputs (n, hidden), and
    what the down projections add per token (tokens, hidden, float32): each expert's output weighted
    by its router weight. A module may transform its experts' outputs before summing them (Ergo
    normalises each one), so a spike is looked for in `total`, not in the module's output."""

    routed: list[Routed]
    outputs: list[torch.Tensor]
    total: torch.Tensor


def recompute(site: DownProjection, calls: list[ModuleCall], routing: Routing | None = None) -> Recomputed:
    """The experts' down projections of one call of `site`'s module, or of its calls within one call
    of its parent (grouped and sliced experts, with the parent's `routing` of that call)."""
    routed = list(down_inputs(site, calls, routing))
    if not routed:
        raise UnsupportedArchitectureError(site.param, type(site.module).__name__, "no token reached an expert with a "
                                           "down projection (only identity or zero-computation experts ran)")
    transposed = site.layout.endswith("in_out")
    outputs = [_down_output(site, expert, x, transposed) for expert, _, _, x in routed]
    if routing is not None:  # its rows are routed copies of tokens
        tokens = routing.offset.shape[0]
    else:
        output = calls[0][2]
        rows = output.reshape(-1, output.shape[-1]).shape[0]
        tokens = rows // site.weight.shape[0] if site.experts == "pre_routed" else rows
    total = torch.zeros(tokens, outputs[0].shape[-1], dtype=torch.float32, device=outputs[0].device)
    for (_, at, gains, _), out in zip(routed, outputs):
        total.index_add_(0, at, gains[:, None].float() * out.float())
    return Recomputed(routed, outputs, total)


def _down_output(site: DownProjection, expert: int, x: torch.Tensor, transposed: bool) -> torch.Tensor:
    """One expert's down projection of its inputs x (n, inter), bias included: (n, hidden)."""
    weight = site.by_expert[expert]
    out = x @ (weight if transposed else weight.T)
    return out + site.module.down_proj_bias[expert] if getattr(site.module, "has_bias", False) else out


def _arguments(args: tuple, kwargs: dict, names: tuple[str, ...]) -> tuple:
    return (tuple(args) + tuple(kwargs[n] for n in names[len(args):]))[: len(names)]


def _interface(experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> Iterator[Routed]:
    hidden = hidden.reshape(-1, hidden.shape[-1])
    gated = getattr(experts, "has_gate", True)
    name = "gate_up_proj" if gated else "up_proj"
    for expert in top_k_index.unique().tolist():
        if expert >= experts.down_proj.shape[0]:
            continue  # the "no expert" slot some routers use
        tokens, slot = torch.where(top_k_index == expert)
        weight = getattr(experts, name)[expert]
        up = hidden[tokens] @ (weight if getattr(experts, "is_transposed", False) else weight.T)
        if getattr(experts, "has_bias", False):
            up = up + getattr(experts, f"{name}_bias")[expert]
        x = experts._apply_gate(up) if gated else experts.act_fn(up)
        yield expert, tokens, top_k_weights[tokens, slot], x


def _in_routed_order(inputs: Iterable[tuple[int, torch.Tensor]], routing: Routing) -> Iterator[Routed]:
    """Each expert's down inputs (rows, in), in the order its parent routed the rows (grouped: one call
    sorted by expert; sliced: one call per expert), with the tokens and weights the routing gave them."""
    start = 0
    for expert, x in inputs:
        rows = slice(start, start + x.shape[0])
        if x.shape[0]:
            yield expert, routing.tokens[rows], routing.gains[rows], x
        start += x.shape[0]


def _sliced_input(site: DownProjection, args: tuple, kwargs: dict) -> tuple[int, torch.Tensor]:
    """The expert of one call (the offset of its slice of the weight) and its down input (rows, in):
    the call again with the slice `[in, out]` replaced by unit matrices, `out` input channels at a
    time (input channel start + k into output channel k), less the call with it zeroed."""
    position, _, offset = next(v for v in own_views(site.module, args, kwargs) if getattr(site.module, v[1]) is site.weight)
    view = (*args, *kwargs.values())[position]
    _, chunks = _unit_responses(view, lambda replaced: _called(site.module, args, kwargs, position, replaced))
    return offset // view.numel(), torch.cat(chunks, dim=1).to(view.dtype)


def _pre_routed(experts: nn.Module, hidden: torch.Tensor) -> Iterator[Routed]:
    count = experts.down_proj.shape[0]
    routed = hidden.reshape(count, -1, hidden.shape[-1])  # (E, tokens, hidden), router weight folded in
    gate, up = torch.bmm(routed, experts.gate_up_proj).chunk(2, dim=-1)
    x = up * experts.act_fn(gate)  # (E, tokens, inter)
    tokens = torch.arange(routed.shape[1], device=hidden.device)
    ones = torch.ones(routed.shape[1], device=hidden.device, dtype=hidden.dtype)
    for expert in range(count):
        active = routed[expert].abs().amax(-1) > 0  # tokens the router sent here (others are zeroed)
        if active.any():
            yield expert, tokens[active], ones[active], x[expert][active]


def _weighted(experts: nn.Module, hidden: torch.Tensor, weights: torch.Tensor) -> Iterator[Routed]:
    hidden = hidden.reshape(-1, hidden.shape[-1])
    weights = weights.reshape(hidden.shape[0], -1)  # (tokens, E)
    tokens = torch.arange(hidden.shape[0], device=hidden.device)
    for expert in range(experts.down_proj.shape[0]):
        x = experts.act_fn(hidden @ experts.gate_proj[expert].T) * (hidden @ experts.up_proj[expert].T)
        yield expert, tokens, weights[:, expert], x
