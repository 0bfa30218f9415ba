"""Which scalars the controls zero: control A, seeded random weights in the candidates' own matrices;
control B, the largest-magnitude down-projection weights that are not candidates (the paper's
7000 outliers of Llama-7B, as a share of all down-projection weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from catalog.architectures import DownProjection, Entries, Sites
from catalog.result import SuperWeight

WeightOf = Callable[[DownProjection], torch.Tensor]  # a down projection's values (streaming reads them from the shards)


def own_weight(site: DownProjection) -> torch.Tensor:
    return site.weight



def random_control(sites: Sites, weights: list[SuperWeight], seed: int) -> Entries:
    """One seeded random scalar per candidate, in the candidate's own matrix, never a candidate."""
    gen = torch.Generator().manual_seed(seed)
    taken = {(w.param, tuple(w.tensor_index)) for w in weights}
    entries = []
    for w in weights:
        tensor = sites.named(w.param).weight
        while True:
            index = tuple(int(torch.randint(n, (1,), generator=gen)) for n in tensor.shape)
            if (w.param, index) not in taken:
                taken.add((w.param, index))
                entries.append((tensor, index))
                break
    return entries


def outlier_control(sites: list[DownProjection], weights: list[SuperWeight], count: int,
                    weight_of: WeightOf = own_weight) -> Entries:
    """The `count` largest-magnitude down-projection weights that are not candidates.

    Selected on the weights' device in a few tensor operations and one transfer: a 7B model's
    control B has ~7000 entries, too many for one Python step (and one GPU synchronisation) each.
    Each projection's top-k is taken in turn, so `weight_of` may read one at a time.
    """
    skip = {(w.param, tuple(w.tensor_index)) for w in weights}
    k = count + len(weights)
    tops = _largest(sites, k, weight_of)
    values = torch.cat([top.values.float() for top in tops])  # (sites * k,)
    site_ids = torch.cat([torch.full_like(top.indices, s) for s, top in enumerate(tops)])
    flat = torch.cat([top.indices for top in tops])
    order = values.argsort(descending=True, stable=True)[:k]
    site_ids, flat = site_ids[order], flat[order]
    dims = max(site.weight.dim() for site in sites)
    shapes = torch.tensor([(1,) * (dims - site.weight.dim()) + tuple(site.weight.shape) for site in sites], device=flat.device)
    strides = shapes.flip(-1).cumprod(-1).flip(-1).roll(-1, -1)
    strides[:, -1] = 1
    indices = flat[:, None] // strides[site_ids] % shapes[site_ids]  # unravelled, every projection at once
    entries = []
    for row in torch.cat([site_ids[:, None], indices], dim=1).tolist():
        site = sites[row[0]]
        index = tuple(row[1 + dims - site.weight.dim():])
        if (site.param, index) not in skip and len(entries) < count:
            entries.append((site.weight, index))
    return entries


def _largest(sites: list[DownProjection], k: int, weight_of: WeightOf) -> list:
    """Per site, its largest magnitudes: enough of them to hold its part of the global top `k`.

    A top-k with k ~7000 of each of a 7B's 32 projections costs more than the conditions it sets
    up, so each site first gives a few more than an even share. The k-th largest of those is at
    most the global k-th; a site whose smallest kept value is below it has no more members, and
    the others (rare: outliers bunched in a few projections) are taken again with the full k.
    """
    tops = [_top_magnitudes(weight_of(site), 2 * -(-k // len(sites)) + 16) for site in sites]
    values = torch.cat([t.values for t in tops])
    if values.numel() >= k:
        kth = values.float().topk(k).values[-1]
        smallest = torch.stack([t.values[-1].float() for t in tops])
        partial = [len(t.values) < min(k, site.weight.numel()) for t, site in zip(tops, sites)]
        for i in (smallest >= kth).nonzero().flatten().tolist():
            if partial[i]:
                tops[i] = _top_magnitudes(weight_of(sites[i]), k)
    return tops


def _top_magnitudes(weight: torch.Tensor, n: int) -> TopK:
    """The `n` largest |weight| and their flat indices, from the `n` rows of largest maximum.

    Those rows hold the n largest values (ties included: each row's maximum is one of the values
    ranked), and a top-k over them reads n rows instead of the whole matrix.
    """
    magnitudes = weight.detach().abs()
    rows = magnitudes.reshape(-1, magnitudes.shape[-1])
    n = min(n, magnitudes.numel())
    if 2 * n >= len(rows):
        top = rows.flatten().topk(n)
        return TopK(top.values, top.indices)
    kept = rows.amax(dim=1).topk(n).indices
    top = rows[kept].flatten().topk(n)
    columns = rows.shape[1]
    return TopK(top.values, kept[top.indices // columns] * columns + top.indices % columns)


@dataclass
class TopK:
    values: torch.Tensor
    indices: torch.Tensor  # into the flattened weight
