"""GGUF dequantization rate per block type: torch (`catalog.gguf_blocks`) against `gguf.dequantize`.

Each type dequantizes the same random blocks (--values in all, in tensors of 4M values whose rows
are --widths wide: gguf works 16 rows per numpy call, so its rate falls with the row's width)
through `catalog.gguf_load.dequantize` as the loader calls it, from a memory-mapped file,
--threads at a time, once with the torch blocks and once with them removed (gguf's numpy path, as
transformers reads a GGUF); the two results are checked bit for bit. One JSON file goes to --results.

    .venv/bin/python benchmarks/dequant_bench.py --results benchmarks/results
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from record import write_results

from catalog import gguf_load
from catalog.gguf_blocks import TORCH_BLOCKS
from catalog.gguf_load import dequantize
from catalog.gguf_meta import TensorEntry
from catalog.patches import replaced
from catalog.scanner import cpu_name

TENSOR = 1 << 22  # values per tensor


def entries(kind: str, values: int, width: int, folder: Path) -> tuple[np.ndarray, list[TensorEntry]]:
    """Random blocks of `kind` for `values` values, laid out as tensors of rows `width` wide in a file, memory-mapped
    as `catalog.gguf_load.read_tensors` maps a GGUF (gguf's numpy path is slower on a map than on an array)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[kind]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    shape = (TENSOR // width, width)
    size = shape[0] * width // block * block_bytes
    count = max(1, values // (shape[0] * width))
    path = folder / f"{kind}.blocks"
    np.random.default_rng(0).integers(0, 256, count * size, dtype=np.uint8).tofile(path)
    return np.memmap(path, dtype=np.uint8, mode="c"), [TensorEntry(f"t{i}", shape, int(qtype), i * size) for i in range(count)]


def timed(data: np.ndarray, tensors: list[TensorEntry], threads: int, runs: int) -> tuple[float, list[np.ndarray]]:
    """The fastest of `runs` passes over the tensors, and the values of the last."""
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(runs):
            start = time.perf_counter()
            out = list(pool.map(lambda e: dequantize(data, e), tensors))
            best = min(best, time.perf_counter() - start)
    return best, out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    nan = np.isnan(a)
    bits = [np.where(nan, 0, x).view(np.uint32) for x in (a, b)]
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(*bits))


def compare(kind: str, data: np.ndarray, tensors: list[TensorEntry], threads: int, runs: int) -> dict:
    """One type through both paths: their times, printed, and their values checked equal."""
    values, width = sum(int(np.prod(t.shape)) for t in tensors), tensors[0].shape[-1]
    ours, mine = timed(data, tensors, threads, runs)
    with replaced(gguf_load, "TORCH_BLOCKS", {}), np.errstate(all="ignore"):
        theirs, reference = timed(data, tensors, threads, runs)
    assert all(map(same_bits, mine, reference)), f"{kind}: torch's values differ from gguf's"
    print(f"{kind:6} {width:6} {ours:8.3f} {theirs:8.3f} {theirs / ours:7.1f}x  ({values / ours / 1e6:.0f}, {values / theirs / 1e6:.0f})")
    return {"type": kind, "width": width, "values": values, "torch_s": round(ours, 3), "gguf_s": round(theirs, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=134_000_000, help="values per type (SmolLM2-135M: 134M)")
    parser.add_argument("--widths", type=int, nargs="*", default=[1536, 4096], help="row widths (SmolLM2's down projection, a 7B's)")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="as catalog.gguf_load.read_tensors")
    parser.add_argument("--runs", type=int, default=3, help="passes per type and path; the fastest is reported")
    parser.add_argument("--types", nargs="*", default=list(TORCH_BLOCKS))
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    rows = []
    print(f"{'type':6} {'width':>6} {'torch s':>8} {'gguf s':>8} {'speed-up':>8}  (M values/s: torch, gguf)")
    for kind, width in itertools.product(args.types, args.widths):
        with tempfile.TemporaryDirectory() as folder:
            data, tensors = entries(kind, args.values, width, Path(folder))
            rows.append(compare(kind, data, tensors, args.threads, args.runs))
    if args.results:
        write_results({"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                       "load_average": os.getloadavg(), "rows": rows}, args.results, "cpu-gguf-dequantize")


if __name__ == "__main__":
    main()
