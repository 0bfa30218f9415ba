"""One-pass super-weight detection (Yu et al. 2024, Sec. 3.1), with the paper's iteration.

A forward pass of a short prompt records, at every down projection, max |input| and max |output|
with channel and token. A layer *spikes* when its max |output| is at least `SpikeRule.ratio`
times the median of all layers' max |output| on the unmodified model. The spike at output
channel `row`, token `t` names the candidate `W[row, col]` with `col` the largest |input| channel
at `t`. Zeroing what was found and running again exposes super weights hidden behind the first
ones; that repeats until no new spike or `max_iterations`. Weights are restored afterwards.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from catalog.architectures import DownProjection, Sites
from catalog.config import SpikeRule
from catalog.hooks import Capture, capture, zeroed
from catalog.result import LayerStat, SuperWeight


@dataclass
class Detection:
    layers: list[LayerStat]
    super_weights: list[SuperWeight]
    iterations: int  # forward passes made
    reference: float  # median max |output| the rule compares against


def run_prompts(model: nn.Module, prompts: list[torch.Tensor], sites: list[DownProjection]) -> dict[int, Capture]:
    """Forward each prompt; keep per site the capture with the largest output spike."""
    best: dict[int, Capture] = {}
    with capture(sites) as captured, torch.inference_mode():
        for ids in prompts:
            model(input_ids=ids, use_cache=False)
            for i, cap in captured.items():
                if i not in best or cap.out_max > best[i].out_max:
                    best[i] = cap
    return best


def layer_stats(sites: list[DownProjection], captures: dict[int, Capture], spiking: set[int]) -> list[LayerStat]:
    """One row per layer; a layer with several down projections (shared expert) shows its largest."""
    rows: dict[int, LayerStat] = {}
    for i, site in enumerate(sites):
        cap = captures[i]
        row = LayerStat(site.layer, cap.in_max, cap.in_channel, cap.out_max, cap.out_channel, cap.token, i in spiking)
        old = rows.get(site.layer)
        if old is None or row.out_max > old.out_max:
            rows[site.layer] = row
    return [rows[layer] for layer in sorted(rows)]


def spiking_sites(captures: dict[int, Capture], rule: SpikeRule, reference: float) -> set[int]:
    return {i for i, c in captures.items() if c.out_max >= rule.ratio * reference and c.out_max >= rule.min_abs}


def candidate(site: DownProjection, cap: Capture, iteration: int) -> SuperWeight:
    """The weight W[row, col] behind a spike, with its share of the spike's output."""
    col = int(cap.x.abs().argmax())
    index = site.index(cap.out_channel, col, cap.expert)
    value = site.weight[index].float().item()
    x_col = cap.x[col].item()
    return SuperWeight(
        layer=site.layer,
        param=site.param,
        expert=cap.expert,
        row=cap.out_channel,
        col=col,
        tensor_index=list(index),
        tensor_shape=list(site.weight.shape),
        value=value,
        input_activation=x_col,
        output_activation=cap.y,
        iteration=iteration,
        token=cap.token,
        share=cap.gain * value * x_col / cap.y if cap.y else 0.0,
    )


# One detection pass with `found` zeroed, at iteration `iteration`: per site the capture, and the
# candidate a spiking site names, by site (in memory, or block by block in `catalog.streaming`).
Pass = Callable[[list[SuperWeight], int], tuple[dict[int, Capture], Callable[[int], SuperWeight]]]


def iterate(run_pass: Pass, sites: list[DownProjection], rule: SpikeRule, max_iterations: int) -> Detection:
    """The paper's iteration: zero what was found and detect again, until nothing new spikes."""
    captures, name = run_pass([], 1)
    reference = statistics.median(c.out_max for c in captures.values())
    layers = layer_stats(sites, captures, spiking_sites(captures, rule, reference))
    found: list[SuperWeight] = []
    passes = 1
    for iteration in range(1, max_iterations + 1):
        new = _unseen([name(i) for i in sorted(spiking_sites(captures, rule, reference))], found)
        if not new:
            break
        found += new
        if iteration == max_iterations:
            break
        captures, name = run_pass(list(found), iteration + 1)
        passes += 1
    return Detection(layers, found, passes, reference)


def _unseen(named: list[SuperWeight], found: list[SuperWeight]) -> list[SuperWeight]:
    """The weights not found before, each once: blocks sharing a weight (Zamba's) may name one
    scalar at several layers, and it is kept at the first."""
    seen = {(w.param, w.expert, w.row, w.col) for w in found}
    new = []
    for w in named:
        if (key := (w.param, w.expert, w.row, w.col)) not in seen:
            seen.add(key)
            new.append(w)
    return new


def detect(model: nn.Module, prompts: list[torch.Tensor], sites: Sites, rule: SpikeRule, max_iterations: int) -> Detection:
    def run_pass(found: list[SuperWeight], iteration: int) -> tuple[dict[int, Capture], Callable[[int], SuperWeight]]:
        with zeroed(sites.scalars(found)):
            captures = run_prompts(model, prompts, sites)
        return captures, lambda i: candidate(sites[i], captures[i], iteration)

    return iterate(run_pass, sites, rule, max_iterations)
