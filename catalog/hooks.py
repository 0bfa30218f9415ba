"""Context managers that always undo themselves: activation captures on the down projections,
weights zeroed in place (restored bit for bit, since the original scalars are kept), and the
same zeroing applied per sample of a batch without touching the weights. Their hooks go through
`catalog.patches.hooked`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch

from catalog import experts
from catalog.architectures import DownProjection, Entries, Sites
from catalog.patches import hooked


@dataclass
class Capture:
    """What one forward pass showed at one down projection.

    The spike is the largest |output|, at prompt position `token` and output channel `out_channel`;
    `x` is the down projection's input at that token (for MoE: of the expert contributing most,
    which was weighted by the router's `gain`).
    """

    in_max: float
    in_channel: int
    in_token: int
    out_max: float
    out_channel: int
    token: int
    y: float  # signed output at the spike
    x: torch.Tensor  # (intermediate,) input at the spike token
    expert: int | None = None
    gain: float = 1.0


def _argmax2d(t: torch.Tensor) -> tuple[float, int, int]:
    """max |t| of a (tokens, channels) tensor with its token and channel."""
    flat = t.abs().float().flatten().argmax().item()
    token, channel = divmod(flat, t.shape[-1])
    return t[token, channel].abs().float().item(), token, channel


def _dense_capture(x: torch.Tensor, y: torch.Tensor) -> Capture:
    # x: (tokens, intermediate), y: (tokens, hidden)
    in_max, in_token, in_channel = _argmax2d(x)
    out_max, token, out_channel = _argmax2d(y)
    x_t = x[token].detach().to("cpu", torch.float32, copy=True)  # a copy: the model may reuse x's memory
    return Capture(in_max, in_channel, in_token, out_max, out_channel, token, y[token, out_channel].float().item(), x_t)


def _experts_capture(site: DownProjection, calls: list[experts.ModuleCall], routing: experts.Routing | None = None) -> Capture:
    """The spike of a fused experts module, in the routed sum of its experts' down outputs
    (`experts.recompute`), attributed to the expert contributing most to it."""
    done = experts.recompute(site, calls, routing)
    routed, outs, y = done.routed, done.outputs, done.total
    out_max, token, row = _argmax2d(y)
    best = None  # (|contribution|, expert, x, gain)
    in_stats = (0.0, 0, 0)
    for (expert, tokens, gains, x), out in zip(routed, outs):
        e_max, e_token, e_channel = _argmax2d(x)
        if e_max > in_stats[0]:
            in_stats = (e_max, tokens[e_token].item(), e_channel)
        hit = (tokens == token).nonzero()
        if len(hit):
            i = hit[0, 0]
            contribution = abs(gains[i].item() * out[i, row].float().item())
            if best is None or contribution > best[0]:
                best = (contribution, expert, x[i].detach().float().cpu(), gains[i].item())
    if best is None:  # every routed output is zero and the first token reached no expert: no spike
        expert, tokens, gains, x = routed[0]
        best, token = (0.0, expert, x[0].detach().float().cpu(), gains[0].item()), tokens[0].item()
    _, expert, x_t, gain = best
    return Capture(in_stats[0], in_stats[2], in_stats[1], out_max, row, token, y[token, row].item(), x_t, expert, gain)


@contextmanager
def capture(sites: list[DownProjection]) -> Iterator[dict[int, Capture]]:
    """Record a `Capture` per site (keyed by position in `sites`) on each forward pass of batch size 1.

    Grouped and sliced experts return rows, not tokens: their calls are kept until their routing
    module returns, whose hook attributes the rows to tokens (`experts.routing`, which calls that
    module again, and `experts.recompute` the sliced experts: those calls are not captured).
    """
    captured: dict[int, Capture] = {}
    pending: dict[int, list[experts.ModuleCall]] = {}  # site -> its module's calls within the routing module's
    rerun = False  # inside a routing module's re-calls

    def recorder(i: int, site: DownProjection) -> Callable:
        def hook(module, args, kwargs, output):
            y = output[0] if isinstance(output, tuple) else output
            if site.routing is not None:
                if not rerun:
                    pending.setdefault(i, []).append((args, kwargs, y))
            elif site.fused:
                captured[i] = _experts_capture(site, [(args, kwargs, y)])
            else:
                x = args[0] if args else next(iter(kwargs.values()))
                captured[i] = _dense_capture(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
        return hook

    def router(i: int, site: DownProjection) -> Callable:
        def hook(module, args, kwargs, output):
            nonlocal rerun
            if rerun:
                return
            calls = pending.pop(i)
            rerun = True
            try:
                routing = experts.routing(site, args, kwargs, [rows for *_, rows in calls])
                captured[i] = _experts_capture(site, calls, routing)
            finally:
                rerun = False
        return hook

    hooks = [(site.module, recorder(i, site)) for i, site in enumerate(sites)]
    hooks += [(site.routing, router(i, site)) for i, site in enumerate(sites) if site.routing is not None]
    with hooked(hooks, with_kwargs=True):
        yield captured


@contextmanager
def zeroed(entries: Entries) -> Iterator[None]:
    """Zero each (tensor, index) scalar in place; put the exact original values back on exit.

    One gather and one scatter per tensor, however many scalars (control B of a 7B model zeroes
    ~7000), and one copy of the indices to the device: the originals are gathered before any is
    zeroed, so a repeated index keeps its value.
    """
    groups: dict[int, tuple[torch.Tensor, list[tuple[int, ...]]]] = {}
    for tensor, index in entries:
        groups.setdefault(id(tensor), (tensor, []))[1].append(index)
    columns = [(tensor, [list(dim) for dim in zip(*indices)]) for tensor, indices in groups.values()]
    on_device = iter(_on_device([dim for _, dims in columns for dim in dims], columns[0][0].device) if columns else [])
    saved = []
    try:
        with torch.no_grad():
            for tensor, dims in columns:
                idx = tuple(next(on_device) for _ in dims)
                saved.append((tensor, idx, tensor[idx].clone()))
                tensor.index_put_(idx, torch.zeros((), dtype=tensor.dtype, device=tensor.device))
        yield
    finally:
        with torch.no_grad():
            for tensor, idx, values in reversed(saved):
                tensor.index_put_(idx, values)


def zeroed_per_block(sites: Sites, entries: Entries) -> Callable[[int], AbstractContextManager]:
    """`zeroed(entries)` one block at a time (a streamed pass, `catalog.streaming`): the scalars of
    block `layer` zeroed while it runs, grouped by block once rather than at every block."""
    by_layer = sites.by_layer(entries)
    return lambda layer: zeroed(by_layer.get(layer, []))


@contextmanager
def zeroed_per_sample(sites: Sites, entries: list[Entries]) -> Iterator[None]:
    """Forward passes as if sample k of each batch ran under `zeroed(entries[k])`, all in one batch.

    The weights stay as they are; a hook recomputes, for sample k only, each output row that its
    zeroed scalars touch, from a copy of that weight row with them zeroed (the row's own dot
    product, as the layer's matrix product computes it, up to summation order), at every block
    that shares the weight. Dense layouts only (nn.Linear, Conv1D): fused experts route tokens,
    and are refused.
    """
    groups = [(sample, param, pairs) for sample, sample_entries in enumerate(entries)
              for param, pairs in _rows_and_cols(sites, sample_entries).items()]
    indices = _on_device([lists for _, _, pairs in groups for lists in _row_indices(pairs)], sites[0].weight.device)
    patches: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}  # site -> (sample, rows, zeroed rows)
    for (sample, param, _), (rows, at, cols) in zip(groups, zip(*[iter(indices)] * 3)):
        patches.setdefault(param, []).append((sample, rows, _zeroed_rows(sites.named(param), rows, at, cols)))
    modules = [(site.module, site_patches) for param, site_patches in patches.items() for site in sites.sharing(param)]
    with hooked((module, _recompute_rows(site_patches, getattr(module, "bias", None))) for module, site_patches in modules):
        yield


def _rows_and_cols(sites: Sites, entries: Entries) -> dict[str, list[tuple[int, int]]]:
    """The (row, col) of W[row, col] of each entry, per site (by its param)."""
    grouped: dict[str, list[tuple[int, int]]] = {}
    for tensor, index in entries:
        site = sites.holding(tensor)
        if site.fused:
            raise ValueError(f"{site.param}: per-sample zeroing needs a dense down projection")
        grouped.setdefault(site.param, []).append((index[1], index[0]) if site.layout == "in_out" else tuple(index))
    return grouped


def _row_indices(pairs: list[tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    """The touched rows (sorted), and each pair's position among them and column."""
    rows = sorted({row for row, _ in pairs})
    at = {row: i for i, row in enumerate(rows)}
    return rows, [at[row] for row, _ in pairs], [col for _, col in pairs]


def _on_device(lists: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """The index lists as tensors on `device`, through one host-to-device copy: each copy of a
    small index tensor waits for the GPU, and a batch of first windows needs one per touched site."""
    joined = torch.tensor([value for values in lists for value in values], dtype=torch.long).to(device)
    return list(joined.split([len(values) for values in lists]))


def _zeroed_rows(site: DownProjection, rows: torch.Tensor, at: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A copy of W[rows, :] with the scalars (at, cols) of it zeroed."""
    weight = site.rows(rows).detach().clone()
    weight[at, cols] = 0
    return weight


def _recompute_rows(patches: list[tuple[int, torch.Tensor, torch.Tensor]], bias: torch.Tensor | None):
    def hook(module, args, output):
        x, out = args[0], output.clone()
        for sample, rows, weight in patches:
            y = x[sample] @ weight.T
            out[sample, ..., rows] = (y + bias[rows] if bias is not None else y).to(out.dtype)
        return out
    return hook
