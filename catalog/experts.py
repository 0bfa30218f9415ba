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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from catalog.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from catalog.architectures import DownProjection

Routed = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]  # expert, token indices, router weights, inputs (n, inter)


def down_inputs(kind: str, experts: nn.Module, args: tuple, kwargs: dict) -> Iterator[Routed]:
    """Each expert that received tokens: which tokens, with what router weight, and its down input."""
    if kind == "pre_routed":
        yield from _pre_routed(experts, _arguments(args, kwargs, ("hidden_states",))[0])
    else:
        yield from _interface(experts, *_arguments(args, kwargs, ("hidden_states", "top_k_index", "top_k_weights")))


@dataclass
class Recomputed:
    """One call of an experts module, rebuilt: each routed expert, its down outputs (n, hidden), and
    what the down projections add per token (tokens, hidden, float32): each expert's output weighted
    by its router weight. A module may transform its experts' outputs before summing them (Ergo
    normalises each one), so a spike is looked for in `total`, not in the module's output."""

    routed: list[Routed]
    outputs: list[torch.Tensor]
    total: torch.Tensor


def recompute(site: DownProjection, args: tuple, kwargs: dict, output: torch.Tensor) -> Recomputed:
    """The experts' down projections of one call of `site`'s module (args, kwargs, output as a hook sees them)."""
    routed = list(down_inputs(site.experts, site.module, args, kwargs))
    if not routed:
        raise UnsupportedArchitectureError(site.param, type(site.module).__name__, "no token reached an expert with a "
                                           "down projection (only identity or zero-computation experts ran)")
    transposed = site.layout == "experts_in_out"
    outputs = [_down_output(site.module, expert, x, transposed) for expert, _, _, x in routed]
    rows = output.reshape(-1, output.shape[-1]).shape[0]
    tokens = rows // site.module.down_proj.shape[0] if site.experts == "pre_routed" else rows
    total = torch.zeros(tokens, outputs[0].shape[-1], dtype=torch.float32, device=outputs[0].device)
    for (_, at, gains, _), out in zip(routed, outputs):
        total.index_add_(0, at, gains[:, None].float() * out.float())
    return Recomputed(routed, outputs, total)


def _down_output(experts: nn.Module, expert: int, x: torch.Tensor, transposed: bool) -> torch.Tensor:
    """One expert's down projection of its inputs x (n, inter), bias included: (n, hidden)."""
    weight = experts.down_proj[expert]
    out = x @ (weight if transposed else weight.T)
    return out + experts.down_proj_bias[expert] if getattr(experts, "has_bias", False) else out


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
