"""Detection on a loaded model, alone (issue 16, item 1): the scan's `detect` phase repeated in one
process, the GPU synchronised around each, so that a change to detection shows above the noise of
whole scans.

    python benchmarks/detect_bench.py /tmp/swb/7b --device cuda --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from catalog.config import ScanOptions
from catalog.detection import detect
from catalog.loading import load
from catalog.scanner import model_input
from catalog.sources import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loaded, options = load(resolve(str(args.path)), device=args.device), ScanOptions()
    prompts = [model_input(loaded, loaded.tokenizer(p, return_tensors="pt").input_ids, "the prompt") for p in options.prompts]
    seconds, found = [], None
    for _ in range(args.repeats + 1):  # the first warms the kernels
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        found = detect(loaded.model, prompts, loaded.architecture.sites, options.rule, options.max_iterations)
        seconds.append(round(time.perf_counter() - start, 4))
    print(json.dumps({"path": str(args.path), "device": args.device, "passes": found.iterations,
                      "prompt_tokens": [ids.shape[1] for ids in prompts], "seconds": seconds[1:],
                      "median_s": statistics.median(seconds[1:]),
                      "found": [(w.layer, w.row, w.col) for w in found.super_weights]}), flush=True)


if __name__ == "__main__":
    main()
