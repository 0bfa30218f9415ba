"""Layer streaming under a GPU-memory budget against the floor and the in-memory scan.

For each synthetic checkpoint (`synth.py`), page cache warm: the floor (`bench.floor`), the scan
streamed under `--budget` (wall, phases, peak `torch.cuda.max_memory_allocated`), then the same
scan in memory (both evaluating every window, `--full-eval`), and how far their perplexities are
apart. Appends one JSON row per checkpoint.

    python benchmarks/stream_bench.py --sizes 7b --budget 4GiB --device cuda --work /tmp/swb --results $OUT
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench, synth, run as a script

import bench  # noqa: E402
from record import write_results  # noqa: E402

from catalog.config import VerifyOptions  # noqa: E402
from catalog.errors import BadOptionError  # noqa: E402
from catalog.options import parse_size  # noqa: E402

import synth  # noqa: E402


def scanned(checkpoint: synth.Checkpoint, args, budget: int | None) -> dict:
    """`bench.timed_scan`, every condition on every window (a streamed pass carries them all), with each row's perplexity."""
    timed = bench.timed_scan(checkpoint, args.device, VerifyOptions(early_stop=False), args.eval_tokens, args.seq_len, budget)
    result = timed.pop("result")
    return timed | {"ppl": {a.name: a.ppl for a in result.ablations}}


def streamed_within(checkpoint: synth.Checkpoint, args) -> tuple[dict, int, str | None]:
    """The streamed scan under `--budget`, or, where that budget is refused up front, the refusal
    and the scan under the budget the refusal names."""
    budget = parse_size(args.budget)
    try:
        return scanned(checkpoint, args, budget), budget, None
    except BadOptionError as exc:
        refusal = str(exc)  # the retry runs after the except block: its traceback holds the refused scan's weights
    print(f"refused: {refusal}", flush=True)
    bench.release()
    budget = parse_size(re.search(r"--max-gpu-memory (\S+)", refusal)[1].rstrip(";,."))
    return scanned(checkpoint, args, budget), budget, refusal


def bench_size(size: str, args) -> dict:
    checkpoint, floor_s = bench.prepare(size, args)
    read_s = bench.parallel_read(checkpoint.shards, args.device)
    streamed, budget, refusal = streamed_within(checkpoint, args)
    print(f"[{size}] streamed under {budget} B: {streamed}", flush=True)
    in_memory = scanned(checkpoint, args, None)
    print(f"[{size}] in memory: {in_memory}", flush=True)
    differences = [abs(streamed["ppl"][name] / ppl - 1) for name, ppl in in_memory["ppl"].items()]
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **bench.environment(args.device),
            "model_size": size, "checkpoint": synth.describe(checkpoint), "max_gpu_memory": args.budget,
            "refused": refusal, "budget_bytes": budget, "parallel_read_s": round(read_s, 3),
            "peak_over_budget": round(streamed["peak_gpu_gb"] * 1e9 / budget, 3) if streamed["peak_gpu_gb"] else None,
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
    write_results(rows, args.results, f"{args.device.split(':')[0]}-{'-'.join(args.sizes)}-streamed")


if __name__ == "__main__":
    main()
