"""The default SmolLM2 GGUF scan on this machine's CPU, code against code, alternating (issue 16, item 3).

Each run is `python -m catalog scan SmolLM2-135M-Instruct.Q4_1.gguf --no-save --json ...` in one
checkout (`--code DIR`, in turn), with its wall time, the load average before and after, the scan's
phase timings and verification summary, and every row's perplexity (runs of all checkouts must
agree). On a 2-core machine shared with other sessions wall times vary 3x with the load, so each
checkout is also counted once, which no load changes: how many samples each block's down
projection computed during verification (baseline, first windows, the rest) and how many windows
went through the head.

    python benchmarks/smollm2_verify.py --code /work/wt/before --code . --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from record import write_results

GGUF = Path.home() / ".local/share/superweights/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def in_checkout(code: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=code, env=env, capture_output=True, text=True, check=True)


def scan_run(code: Path, json_path: Path) -> dict:
    before, started = load_average(), time.perf_counter()
    in_checkout(code, ["-m", "catalog", "scan", str(GGUF), "--no-save", "--json", str(json_path)])
    wall = time.perf_counter() - started
    result = json.loads(json_path.read_text())
    weights = result["super_weights"]
    return {"code": str(code), "commit": commit(code), "wall_s": round(wall, 2), "load_average": [before, load_average()],
            "timings": result["timings"], "evaluation": result["summary"]["evaluation"],
            "confirmed": [[w["layer"], w["row"], w["col"], round(w["ppl_ratio"], 3)] for w in weights if w["verdict"] == "confirmed"],
            "rejected": sum(w["verdict"] == "rejected" for w in weights),
            "ppl": {row["name"]: row["ppl"] for row in result["ablations"]}}


def commit(code: Path) -> str:
    return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def count_work() -> dict:
    """In this process (the checkout on sys.path): samples per block and head windows of one verification."""
    import torch

    from catalog.causal import verify
    from catalog.config import ScanOptions
    from catalog.detection import detect
    from catalog.loading import load
    from catalog.patches import hooked
    from catalog.sources import resolve

    options = ScanOptions()
    loaded = load(resolve(str(GGUF)))
    sites = loaded.architecture.sites
    prompt = loaded.tokenizer(options.prompts[0], return_tensors="pt").input_ids
    weights = detect(loaded.model, [prompt], sites, options.rule, options.max_iterations).super_weights
    windows = options.text.windows(loaded.tokenizer, options.eval_tokens, options.seq_len)
    samples, heads = [0] * len(sites), [0]

    def block(layer):
        def hook(module, args):
            samples[layer] += args[0].shape[0]
        return hook

    def head(module, args):
        heads[0] += args[0].shape[0]
    with torch.inference_mode(), hooked([(site.module, block(site.layer)) for site in sites]
                                        + [(loaded.model.get_output_embeddings(), head)], pre=True):
        verify(loaded.model, windows, sites, weights, options.verification)
    return {"sample_blocks": sum(samples), "per_block": samples, "head_windows": heads[0]}


def max_difference(runs: list[dict]) -> float:
    """The largest relative difference of a row's perplexity from the first run's (rounding: ~1e-6)."""
    first = runs[0]["ppl"]
    return max(abs(ppl / first[name] - 1) for run in runs for name, ppl in run["ppl"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, action="append", required=True, help="a checkout (repeat: alternated)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each checkout")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)  # the work count, in a checkout
    args = parser.parse_args()
    if args.count:
        print(json.dumps(count_work()))
        return
    codes = [code.resolve() for code in args.code]
    work = {str(code): json.loads(in_checkout(code, [str(Path(__file__).resolve()), "--code", ".", "--count"]).stdout)
            for code in codes}
    runs = []
    for i in range(args.runs):
        for code in codes:
            runs.append(scan_run(code, Path(f"/tmp/smollm2-verify-{i}-{code.name}.json")))
            print(json.dumps({k: runs[-1][k] for k in ("code", "wall_s", "load_average", "timings")}), flush=True)
    figures = {"what": "superweights scan SmolLM2-135M-Instruct.Q4_1.gguf --no-save (defaults), checkouts alternating",
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "max_relative_ppl_difference": max_difference(runs),
               "work": work, "runs": runs}
    for code, counted in work.items():
        print(code, {k: counted[k] for k in ("sample_blocks", "head_windows")})
    write_results(figures, args.results, "cpu-smollm2-verify")


if __name__ == "__main__":
    main()
