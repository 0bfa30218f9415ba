"""GGUF quantization blocks dequantized by torch, bit for bit as the `gguf` package does it.

`gguf.dequantize` works in numpy and holds the GIL for much of its time: 2 threads spent 8.6 s on
SmolLM2's Q4_1 values, which one thread of torch dequantizes in 0.7 s. Each function here is
gguf.quants' `dequantize_blocks` for its type, the same float32 operations in the same order (a
multiply, then an add or a subtract where gguf has one), so the same bits; the integer unpacking
around them is exact either way. The Hub's common files are covered: the legacy types (Q4_0 to
Q8_0) and the k-quants of Q2_K to Q6_K (Q4_K_M is Q4_K and Q6_K). Every other type stays with gguf.

Each function takes a tensor of raw blocks, (blocks, bytes per block) uint8, and returns their
values, (blocks, values per block) float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

QK_K = 256  # values per k-quant super-block


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 at bytes [at, at + 2) of each block, as float32: (blocks, 1)."""
    return blocks[:, at: at + 2].contiguous().view(torch.float16).float()


def _unpack(packed: torch.Tensor, width: int, shifts: Sequence[int], mask: int) -> torch.Tensor:
    """Bit fields, in gguf's order: each run of `width` bytes shifted by each of `shifts` in turn,
    then masked; (blocks, bytes) -> (blocks, bytes * len(shifts)) uint8."""
    n = packed.shape[0]
    by = torch.tensor(shifts, dtype=torch.uint8).view(1, 1, -1, 1)
    return ((packed.reshape(n, -1, 1, width) >> by) & mask).reshape(n, -1)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K's and Q5_K's 8 six-bit scales and 8 six-bit minimums, packed in 12 bytes (gguf's
    `Q4_K.get_scale_min`): (blocks, 8) uint8 each."""
    d, m, m_d = packed.reshape(-1, 3, 4).unbind(1)
    scales = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scales, mins


def _five_bits(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Q5_0's and Q5_1's 32 values: the low nibbles of 16 bytes and one high bit each from a
    little-endian 32-bit word."""
    return _unpack(low, 16, (0, 4), 0x0F) | (_unpack(high, 1, range(8), 1) << 4)


def q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_unpack(b[:, 2:], 16, (0, 4), 0x0F).to(torch.int8) - 8).float()


def q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _unpack(b[:, 4:], 16, (0, 4), 0x0F).float() + _f16(b, 2)


def q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_five_bits(b[:, 6:], b[:, 2:6]).to(torch.int8) - 16).float()


def q5_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _five_bits(b[:, 8:], b[:, 4:8]).float() + _f16(b, 2)


def q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].view(torch.int8).float() * _f16(b, 0)


def q2_k(b: torch.Tensor) -> torch.Tensor:
    n, scales = len(b), b[:, :16]
    dl = (_f16(b, 80) * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (_f16(b, 82) * (scales >> 4).float()).reshape(n, 16, 1)
    q = _unpack(b[:, 16:80], 32, (0, 2, 4, 6), 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def q3_k(b: torch.Tensor) -> torch.Tensor:
    n, packed = len(b), b[:, 96:108]
    scales = _unpack(packed[:, :8], 8, (0, 4), 0x0F) | (_unpack(packed[:, 8:], 4, (0, 2, 4, 6), 3) << 4)
    dl = (_f16(b, 108) * (scales.to(torch.int8) - 32).float()).reshape(n, 16, 1)
    low = _unpack(b[:, 32:96], 32, (0, 2, 4, 6), 3)
    high = _unpack(b[:, :32], 32, range(8), 1) ^ 1  # the offset of 4 applies where the mask bit is 0
    q = (low.to(torch.int8) - (high << 2).to(torch.int8)).float().reshape(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K's and Q5_K's values from their quants (blocks, 256): scale * q - minimum, per 32."""
    n = len(b)
    scales, mins = _k_scales(b[:, 4:16])
    d = (_f16(b, 0) * scales.float()).reshape(n, 8, 1)
    dm = (_f16(b, 2) * mins.float()).reshape(n, 8, 1)
    return (d * q.reshape(n, 8, 32).float() - dm).reshape(n, QK_K)


def q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _unpack(b[:, 16:], 32, (0, 4), 0x0F))


def q5_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _unpack(b[:, 48:], 32, (0, 4), 0x0F) | (_unpack(b[:, 16:48], 32, range(8), 1) << 4))


def q6_k(b: torch.Tensor) -> torch.Tensor:
    n = len(b)
    d = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).reshape(n, 16, 1)
    q = _unpack(b[:, :128], 64, (0, 4), 0x0F) | (_unpack(b[:, 128:192], 32, (0, 2, 4, 6), 3) << 4)
    return (d * (q.to(torch.int8) - 32).reshape(n, 16, 16).float()).reshape(n, QK_K)


TORCH_BLOCKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": q4_0, "Q4_1": q4_1, "Q5_0": q5_0, "Q5_1": q5_1, "Q8_0": q8_0,
    "Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k,
}
