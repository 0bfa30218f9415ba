"""Where a scan's load goes beyond the parallel read (issue 16, item 1): each step of
`catalog.loading.load` timed on its own, the GPU synchronised after each, page cache warm.

    python benchmarks/load_breakdown.py /tmp/swb/8b --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from catalog import loading
from catalog.architectures import discover
from catalog.loading import buffers_to, checkpoint_names, load, model_info, open_source, place, skeleton
from catalog.reader import ShardReader, checkpoint_shards, index_shards
from catalog.sources import resolve


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
    with ShardReader(spans, opened.device, dtype=opened.dtype) as reader:
        tensors = timed(steps, "read (one call, every tensor)", lambda: reader.read(list(names)))
    timed(steps, "place", lambda: place(model, names, tensors))
    timed(steps, "buffers_to", lambda: buffers_to(model, opened.device))
    timed(steps, "discover (architecture)", lambda: discover(model.eval(), opened.config, source.spec))
    timed(steps, "model_info", lambda: model_info(source, model, opened.config, opened.dtype))
    steps["total"] = round(sum(steps.values()), 4)
    return steps


def overlapped(path: Path, device: str) -> dict[str, float]:
    """`load` as a scan calls it: the read runs while config, tokenizer and skeleton are made;
    and the same with Python's default GIL switch interval (5 ms) instead of the load's."""
    source, steps = resolve(str(path)), {}
    timed(steps, f"load() (read overlapping config, tokenizer, skeleton; switch {loading.SWITCH_INTERVAL * 1e3} ms)",
          lambda: load(source, device=device))
    with mock.patch.object(loading, "SWITCH_INTERVAL", sys.getswitchinterval()):
        timed(steps, f"load() with switch {sys.getswitchinterval() * 1e3} ms", lambda: load(source, device=device))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for run in range(args.repeats):
        print(json.dumps({"path": str(args.path), "run": run, "steps": breakdown(args.path, args.device)}), flush=True)
        print(json.dumps({"path": str(args.path), "run": run, "steps": overlapped(args.path, args.device)}), flush=True)


if __name__ == "__main__":
    main()
