"""Layer streaming under a GPU-memory budget (issue 7, item 3) against the floor and the in-memory scan.

For each synthetic checkpoint (`synth.py`), page cache warm: the floor (`bench.floor`), the scan
streamed under `--budget` (wall, phases, peak `torch.cuda.max_memory_allocated`), then the same
scan in memory (both evaluating every window, `--full-eval`), and how far their perplexities are
apart. Appends one JSON row per checkpoint.

    python benchmarks/stream_bench.py --sizes 7b --budget 4GiB --device cuda --work /tmp/swb --results $OUT
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench, synth, run as a script

import bench  # noqa: E402
import synth  # noqa: E402
from catalog.causal import VerifyOptions  # noqa: E402
from catalog.scan import ScanOptions, scan_source  # noqa: E402
from catalog.sources import resolve  # noqa: E402
from catalog.streaming import parse_size  # noqa: E402


def timed_scan(checkpoint: synth.Checkpoint, args, budget: int | None) -> dict:
    options = ScanOptions(device=args.device, dtype="bfloat16" if args.device.startswith("cuda") else "float32",
                          eval_text=checkpoint.eval_text, eval_tokens=args.eval_tokens, seq_len=args.seq_len, max_gpu_memory=budget,
                          checks=VerifyOptions(early_stop=False))
    bench.release()
    bench.peak_memory_reset(args.device)
    start = time.perf_counter()
    result = scan_source(resolve(str(checkpoint.path)), options)
    bench.sync(args.device)
    return {"wall_s": round(time.perf_counter() - start, 3), "phases": result.timings, "peak_gpu_gb": bench.peak_gpu_gb(args.device),
            "verdicts": {f"L{w.layer}[{w.row},{w.col}]": (w.verdict, round(w.ppl_ratio, 4)) for w in result.super_weights},
            "ppl": {a.name: a.ppl for a in result.ablations}}


def bench_size(size: str, args) -> dict:
    checkpoint = synth.build(size, args.work / size, device=args.device if args.device.startswith("cuda") else "cpu")
    print(f"[{size}] built {checkpoint.bytes / 1e9:.2f} GB in {len(checkpoint.shards)} shards", flush=True)
    bench.warm_page_cache(checkpoint.shards)
    bench.warm_up(checkpoint, args.device, args.seq_len)
    floor_s = bench.floor(checkpoint.shards, args.device)
    streamed = timed_scan(checkpoint, args, parse_size(args.budget))
    print(f"[{size}] floor {floor_s:.3f} s | streamed under {args.budget}: {streamed}", flush=True)
    in_memory = timed_scan(checkpoint, args, None)
    print(f"[{size}] in memory: {in_memory}", flush=True)
    differences = [abs(streamed["ppl"][name] / ppl - 1) for name, ppl in in_memory["ppl"].items()]
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **bench.environment(args.device),
            "model_size": size, "checkpoint": synth.describe(checkpoint), "max_gpu_memory": args.budget,
            "eval_tokens": args.eval_tokens, "seq_len": args.seq_len, "conditions": len(in_memory["ppl"]),
            "floor_s": round(floor_s, 3), "scan_s": streamed["wall_s"], "scan_over_floor": round(streamed["wall_s"] / floor_s, 2),
            "peak_gpu_gb": streamed["peak_gpu_gb"], "streamed": streamed, "in_memory": in_memory,
            "same_verdicts": streamed["verdicts"].keys() == in_memory["verdicts"].keys()
            and all(streamed["verdicts"][k][0] == v[0] for k, v in in_memory["verdicts"].items()),
            "max_ppl_rel_difference": max(differences)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(synth.SHAPES))
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp/superweights-bench"))
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args(argv)
    rows = [bench_size(size, args) for size in args.sizes]
    bench.write_results(rows, args.results, f"{args.device.split(':')[0]}-{'-'.join(args.sizes)}-streamed")


if __name__ == "__main__":
    main()
