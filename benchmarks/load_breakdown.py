"""Where a scan's load goes beyond the parallel read (issue 16, item 1): each step of
`catalog.loading.load` timed on its own, the GPU synchronised after each, page cache warm.

    python benchmarks/load_breakdown.py /tmp/swb/8b --device cuda [--chunks 4 16] [--copies driver torch]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

from catalog import reader
from catalog.architectures import discover
from catalog.loading import buffers_to, checkpoint_names, load, model_info, open_source, place, skeleton
from catalog.reader import ShardReader, index_shards
from catalog.sources import checkpoint_shards, resolve


def timed(steps: dict[str, float], name: str, fn: Callable):  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    steps[name] = round(time.perf_counter() - start, 4)
    return out


def breakdown(path: Path, device: str) -> dict[str, float]:
    source, steps = resolve(str(path)), {}
    opened = timed(steps, "open_source (config, tokenizer)", lambda: open_source(source, device, "auto", False))
    model = timed(steps, "skeleton (meta device)", lambda: skeleton(opened.config, opened.dtype, False))
    spans = timed(steps, "index shards", lambda: index_shards(checkpoint_shards(source.path)))
    names = timed(steps, "checkpoint_names", lambda: checkpoint_names(model, spans))
    with ShardReader(spans, opened.device, dtype=opened.dtype) as shards:
        tensors = timed(steps, "read (one call, every tensor)", lambda: shards.read(list(names)))
    timed(steps, "place", lambda: place(model, names, tensors))
    timed(steps, "buffers_to", lambda: buffers_to(model, opened.device))
    architecture = timed(steps, "discover (architecture)", lambda: discover(model.eval(), opened.config, source.spec))
    timed(steps, "model_info", lambda: model_info(source, model, opened.config, opened.dtype, architecture))
    steps["total"] = round(sum(steps.values()), 4)
    return steps


def loads(path: Path, device: str, chunks: list[int], copies: list[str]) -> dict[str, float]:
    """`load` as a scan calls it, for each way the reader copies ("driver": through ctypes, "torch":
    torch's copy, as where the CUDA driver library is not found) and read chunk size (MiB)."""
    source, steps = resolve(str(path)), {}
    for way in copies:
        for mib in chunks:
            driver = mock.patch.object(reader, "_cuda_driver", lambda: None) if way == "torch" else nullcontext()
            with driver, mock.patch.object(reader, "CHUNK", mib << 20):
                timed(steps, f"load() {way} copies, chunk {mib} MiB", lambda: load(source, device=device))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", nargs="+", type=int, default=[reader.CHUNK >> 20], help="read chunk sizes (MiB)")
    parser.add_argument("--copies", nargs="+", choices=["driver", "torch"], default=["driver"], help="how the reader copies")
    args = parser.parse_args()
    for run in range(args.repeats):
        print(json.dumps({"path": str(args.path), "run": run, "steps": breakdown(args.path, args.device)}), flush=True)
        steps = loads(args.path, args.device, args.chunks, args.copies)
        print(json.dumps({"path": str(args.path), "run": run, "steps": steps}), flush=True)


if __name__ == "__main__":
    main()
