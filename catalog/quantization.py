"""Round-to-nearest weight quantization of the down projections (Yu et al. 2024, Sec. 4.2).

Block-wise asymmetric min-max: each block of `block` consecutive input channels of one output
row gets its own scale and zero point. Holding the super weights out (restoring them in full
precision after quantizing) and clipping outliers before quantizing are the paper's remedies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from catalog.architectures import DownProjection


def rtn(weight: torch.Tensor, bits: int, block: int, clip_quantile: float | None = None) -> torch.Tensor:
    """Quantize then dequantize a (out, in) matrix; returns a new tensor of the same dtype."""
    w = weight.float()
    if clip_quantile:
        lo, hi = _quantiles(w, clip_quantile)
        w = w.clamp(lo, hi)
    out_dim, in_dim = w.shape
    pad = (-in_dim) % block
    blocks = torch.nn.functional.pad(w, (0, pad)).reshape(out_dim, -1, block)  # (out, n_blocks, block)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = ((high - low) / levels).clamp_min(1e-12)
    zero = torch.round(-low / scale)
    q = (torch.round(blocks / scale) + zero).clamp(0, levels)
    return ((q - zero) * scale).reshape(out_dim, -1)[:, :in_dim].to(weight.dtype)


def _quantiles(w: torch.Tensor, q: float) -> tuple[float, float]:
    # torch.quantile refuses large inputs; kthvalue is exact and fine on any size
    flat = w.flatten()
    k_lo = max(1, int(q * flat.numel()))
    k_hi = min(flat.numel(), int((1 - q) * flat.numel()) + 1)
    return flat.kthvalue(k_lo).values.item(), flat.kthvalue(k_hi).values.item()


def _as_out_in(site: DownProjection) -> list[torch.Tensor]:
    """Views of the site's weight as (out, in) matrices (one per expert for fused MoE)."""
    matrices = site.by_expert.unbind(0) if site.fused else [site.weight]
    return [m.T if site.layout.endswith("in_out") else m for m in matrices]


@contextmanager
def quantized(sites: list[DownProjection], bits: int, block: int, clip_quantile: float | None = None,
              keep: list[tuple[torch.Tensor, tuple[int, ...]]] = ()) -> Iterator[None]:
    """Quantize every down projection in place, keeping the `keep` scalars in full precision;
    the original weights are restored exactly on exit (copies are held on the CPU)."""
    originals = [site.weight.detach().to("cpu", copy=True) for site in sites]
    kept = [(tensor, index, tensor[index].clone()) for tensor, index in keep]
    try:
        with torch.no_grad():
            for site in sites:
                for matrix in _as_out_in(site):
                    matrix.copy_(rtn(matrix, bits, block, clip_quantile))
            for tensor, index, value in kept:
                tensor[index] = value
        yield
    finally:
        with torch.no_grad():
            for site, original in zip(sites, originals):
                site.weight.copy_(original)
