"""How busy the GPU is in each phase of a scan after the load (issue 16, item 1): the wall time of
detection and of verification against the time some kernel or copy ran (the union of their
intervals under torch.profiler), on a model loaded once. A phase near 1.0 is bound by the GPU's
work; one well under it waits on Python or on the host.

    python benchmarks/gpu_busy.py /tmp/swb/7b --eval-text /tmp/swb/7b-zipf.txt --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from catalog.causal import verify
from catalog.config import ScanOptions
from catalog.detection import detect
from catalog.loading import LoadedModel, load
from catalog.scanner import model_input
from catalog.sources import resolve


def busy_seconds(prof: profile) -> float:
    """Seconds in which at least one kernel or copy ran on the GPU."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e6


def profiled(run: Callable[[], object]) -> tuple[object, dict]:
    """`run`'s result, wall seconds, GPU-busy seconds, kernel count and the profiler's table of
    the operators that took the most host time."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        out = run()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    busy = busy_seconds(prof)
    kernels = sum(e.device_type == DeviceType.CUDA for e in prof.events())
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return out, {"wall_s": round(wall, 4), "gpu_busy_s": round(busy, 4), "busy_fraction": round(busy / wall, 3), "gpu_ops": kernels,
                 "host_ops": table.splitlines()}


def phases(loaded: LoadedModel, options: ScanOptions) -> dict:
    sites = loaded.architecture.sites
    prompts = [model_input(loaded, loaded.tokenizer(p, return_tensors="pt").input_ids, "the prompt") for p in options.prompts]
    found, detected = profiled(lambda: detect(loaded.model, prompts, sites, options.rule, options.max_iterations))
    seq_len = min(options.seq_len, loaded.context or options.seq_len)
    windows = model_input(loaded, options.text.windows(loaded.tokenizer, options.eval_tokens, seq_len), "the evaluation text")
    checked, verified = profiled(lambda: verify(loaded.model, windows, sites, found.super_weights, options.verification))
    return {"detect": detected, "verify": verified, "evaluation": checked.summary.get("evaluation"),
            "verdicts": {f"L{w.layer} [{w.row}, {w.col}]": w.verdict for w in checked.super_weights}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--eval-text", type=Path, help="default: the scan's (synth.py writes DIR-zipf.txt beside a checkpoint)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded, options = load(resolve(str(args.path)), device="cuda"), ScanOptions(eval_text=args.eval_text)
    phases(loaded, options)  # warms the kernels and the profiler
    for run in range(args.repeats):
        print(json.dumps({"path": str(args.path), "device": torch.cuda.get_device_name(), "run": run,
                          **phases(loaded, options)}), flush=True)


if __name__ == "__main__":
    main()
