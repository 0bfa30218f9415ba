"""Scan cost against the cost of reading the weights once.

For each synthetic checkpoint (`benchmarks/synth.py`), in one process, page cache warm:
- floor: `safetensors.torch.load_file(shard, device=...)` for every shard in turn, no model code;
- copy: pinned host-to-device bandwidth (one pinned buffer copied over, best of several), and the
  time that bandwidth gives the checkpoint's bytes: what no read onto the GPU can beat;
- parallel read: `catalog.reader` reading every tensor onto the device (the scan's own load
  before any model code), checked bit for bit against safetensors on the GPU;
- scan (best of `--repeats`): the product's `scan_source` (load once, detection with iterations, every verification
  condition over `--eval-tokens` tokens), `default` (early stopping) and `full` (`--full-eval`);
- naive: the paper scripts' recipe, a fresh `from_pretrained` and one full evaluation per condition.
Prints the ratios and per-phase times and appends one JSON row per checkpoint to `--results`.

    python benchmarks/bench.py --sizes small --device cpu            # make bench (with --smollm2)
    python benchmarks/bench.py --sizes 1b 7b --device cuda --work /tmp/sw-bench   # on the GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synth, run as a script

from record import write_results  # noqa: E402

from catalog.architectures import discover  # noqa: E402
from catalog.conditions import ActivationRecorder, plan  # noqa: E402
from catalog.config import ScanOptions, VerifyOptions  # noqa: E402
from catalog.evaltext import load_eval_text  # noqa: E402
from catalog.loading import pick_dtype  # noqa: E402
from catalog.perplexity import evaluate, frequent_tokens  # noqa: E402
from catalog.reader import CHUNK, ShardReader  # noqa: E402
from catalog.result import Kind  # noqa: E402
from catalog.scanner import scan, scan_source  # noqa: E402
from catalog.sources import resolve  # noqa: E402

import synth  # noqa: E402

VARIANTS = {
    "full": VerifyOptions(early_stop=False),  # every condition on every window (`--full-eval`)
    "default": VerifyOptions(),
}
MAIN = "default"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warm_page_cache(files: list[Path]) -> None:
    for file in files:
        with open(file, "rb") as f:
            while f.read(64 << 20):
                pass


def warm_up(checkpoint: synth.Checkpoint, device: str, seq_len: int) -> None:
    """A throwaway scan over one window, so that the CUDA context, cuBLAS and the model's kernels
    start here and not inside the first measured variant (a bare matmul warmed too little: the
    2026-11-28 run still put ~2 s of start-up into `plain`, which ran first)."""
    run_scan(checkpoint, device, VerifyOptions(), seq_len, seq_len)


def floor(shards: list[Path], device: str, repeats: int = 2) -> float:
    """Best of `repeats`: every shard read onto the device in turn, nothing else."""
    from safetensors.torch import load_file

    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for shard in shards:
            tensors = load_file(shard, device=device)
            sync(device)
            del tensors
        best = min(best, time.perf_counter() - start)
        release()
    return best


def parallel_read(shards: list[Path], device: str, threads: int | None = None, chunk: int = CHUNK, repeats: int = 2) -> float:
    """Best of `repeats`: every tensor of every shard read onto the device by `catalog.reader`
    (what the scan's load does before any model code)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        with ShardReader.open(shards, torch.device(device), threads=threads, chunk=chunk) as reader:
            tensors = reader.read(list(reader.spans))
        sync(device)
        best = min(best, time.perf_counter() - start)
        del tensors
        release()
    return best


def pinned_bandwidth(device: str, size: int = 1 << 30, repeats: int = 5) -> float | None:
    """Bytes per second of one pinned host buffer copied to the device (best of `repeats`); None off the GPU."""
    if not device.startswith("cuda"):
        return None
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(size, dtype=torch.uint8, device=device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dest.copy_(host, non_blocking=True)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del host, dest
    release()
    return size / best


def resolve_seconds(path: Path) -> dict[str, float]:
    """`resolve` of the directory with an empty sha256 cache (a first scan of it: every shard
    hashed) and then with the cache it filled (every later scan), in a scratch SUPERWEIGHTS_HOME."""
    seconds = {}
    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, SUPERWEIGHTS_HOME=home):
        for name in ("first", "cached"):
            start = time.perf_counter()
            resolve(str(path))
            seconds[name] = round(time.perf_counter() - start, 3)
    return seconds


def check_reader(shards: list[Path], device: str) -> None:
    """The reader's tensors on the device equal safetensors' own, bit for bit (first shard)."""
    from safetensors.torch import load_file

    expected = load_file(shards[0], device=device)
    with ShardReader.open(shards[:1], torch.device(device)) as reader:
        got = reader.read(list(expected))
    assert all(torch.equal(got[k], v) for k, v in expected.items()), "the parallel reader differs from safetensors"
    del expected, got
    release()


def peak_memory_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.startswith("cuda") else None


def timed_scan(checkpoint: synth.Checkpoint, device: str, checks: VerifyOptions, tokens: int, seq_len: int,
               max_gpu_memory: int | None = None) -> dict:
    """One `scan_source` of the checkpoint (dtype auto: bf16 on a GPU), the CUDA allocator emptied
    first: wall time, phases, peak GPU memory, verdicts, and the result itself."""
    options = ScanOptions(device=device, eval_text=checkpoint.eval_text, eval_tokens=tokens, seq_len=seq_len, checks=checks,
                          max_gpu_memory=max_gpu_memory)
    release()
    peak_memory_reset(device)
    start = time.perf_counter()
    result = scan_source(resolve(str(checkpoint.path)), options)
    sync(device)
    return {"wall_s": round(time.perf_counter() - start, 3), "phases": result.timings, "peak_gpu_gb": peak_gpu_gb(device),
            "verdicts": {f"L{w.layer}[{w.row},{w.col}]": (w.verdict, round(w.ppl_ratio, 4)) for w in result.super_weights},
            "result": result}


def run_scan(checkpoint: synth.Checkpoint, device: str, checks: VerifyOptions, tokens: int, seq_len: int) -> dict:
    """`timed_scan` in memory, with verification's parts and the extra cost of each condition."""
    scanned = timed_scan(checkpoint, device, checks, tokens, seq_len)
    result = scanned["result"]
    evaluation, conditions_run = result.summary["evaluation"], len(result.ablations)
    baseline = evaluation["baseline_seconds"]
    return scanned | {
        "phases": result.timings | {"verify_baseline": baseline, "verify_setup": evaluation["setup_seconds"]},
        "condition_seconds": {name: iv["seconds"] for name, iv in result.summary["intervals"].items()},
        "conditions": conditions_run,
        "extra_condition_cost": extra_condition_cost(result.timings["verify"], baseline, conditions_run),
        "tokens": sum(a.tokens for a in result.ablations), "intervals": result.summary.get("intervals"),
        "loader": result.summary.get("loader")}


def paper_load(path: Path, device: str):
    """The paper scripts' load: transformers' `from_pretrained` straight onto the device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype("auto", torch.device(device)), device_map=device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def best_scan(checkpoint: synth.Checkpoint, device: str, checks: VerifyOptions, tokens: int, seq_len: int, repeats: int) -> dict:
    """The fastest of `repeats` scans (the floor is a best of 2 as well), with every wall time."""
    runs = [run_scan(checkpoint, device, checks, tokens, seq_len) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    return best | {"walls_s": [r["wall_s"] for r in runs]}


def naive(checkpoint: synth.Checkpoint, device: str, scanned, tokens: int, seq_len: int) -> dict:
    """The paper scripts' recipe: a fresh `from_pretrained` and one full evaluation per condition
    (+SA also needs its baseline recording)."""
    weights = scanned.super_weights
    n = len(scanned.ablations)
    load_s, eval_s, baseline_eval_s = 0.0, 0.0, None
    start = time.perf_counter()
    for k in range(n):
        release()
        t0 = time.perf_counter()
        model, tokenizer = paper_load(checkpoint.path, device)
        sync(device)
        load_s += time.perf_counter() - t0
        windows = load_eval_text(checkpoint.eval_text).windows(tokenizer, tokens, seq_len)
        sites = discover(model, model.config, str(checkpoint.path)).sites
        recorder = ActivationRecorder(sites, weights)
        conditions = plan(sites, weights, VerifyOptions(), recorder)
        stop = frequent_tokens(windows)
        t0 = time.perf_counter()
        if k == 0:
            evaluate(model, windows, stop)
            baseline_eval_s = time.perf_counter() - t0
        else:
            condition = conditions[k - 1]
            if condition.kind == Kind.RESTORE_SA:
                with recorder.record():
                    evaluate(model, windows, stop)
            with condition.in_pass():
                evaluate(model, windows, stop)
        eval_s += time.perf_counter() - t0
        del model, sites, recorder, conditions
    return {"naive_s": round(time.perf_counter() - start, 3), "naive_load_s": round(load_s, 3), "naive_eval_s": round(eval_s, 3),
            "baseline_eval_s": round(baseline_eval_s, 4), "conditions": n}


def direct_load(checkpoint: synth.Checkpoint, device: str) -> float:
    """`paper_load` alone: transformers' own load onto the device."""
    release()
    start = time.perf_counter()
    model, _ = paper_load(checkpoint.path, device)
    sync(device)
    seconds = time.perf_counter() - start
    del model
    release()
    return seconds


def extra_condition_cost(verify_s: float, baseline_eval_s: float, conditions: int) -> float:
    """Fraction of one baseline evaluation that each condition beyond the baseline adds to verification
    (everything in verification but the baseline pass: condition set-up included)."""
    return round((verify_s - baseline_eval_s) / (conditions - 1) / baseline_eval_s, 3)


def environment(device: str) -> dict:
    import safetensors
    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def prepare(size: str, args) -> tuple[synth.Checkpoint, float]:
    """The checkpoint built, its shards in the page cache, the kernels warm; and the floor."""
    checkpoint = synth.build(size, args.work / size, device=args.device if args.device.startswith("cuda") else "cpu")
    print(f"[{size}] built {checkpoint.bytes / 1e9:.2f} GB in {len(checkpoint.shards)} shards, {checkpoint.build_seconds:.1f} s",
          flush=True)
    warm_page_cache(checkpoint.shards)
    warm_up(checkpoint, args.device, args.seq_len)
    floor_s = floor(checkpoint.shards, args.device)
    print(f"[{size}] floor {floor_s:.3f} s", flush=True)
    return checkpoint, floor_s


def bench_size(size: str, args) -> dict:
    checkpoint, floor_s = prepare(size, args)
    if args.device.startswith("cuda"):
        check_reader(checkpoint.shards, args.device)
    bandwidth = pinned_bandwidth(args.device)
    copy_s = checkpoint.bytes / bandwidth if bandwidth else None
    reads = {f"{threads} threads, {mib} MiB": round(parallel_read(checkpoint.shards, args.device, threads, mib << 20), 3)
             for threads in args.read_threads for mib in args.read_chunks}
    read_s = min(reads.values())
    print(f"[{size}] pinned copy {(bandwidth or 0) / 1e9:.1f} GB/s ({copy_s and round(copy_s, 3)} s for the bytes); "
          f"parallel read by threads: {reads}", flush=True)
    resolves = resolve_seconds(checkpoint.path)
    print(f"[{size}] resolve: {resolves}", flush=True)
    scans = {name: best_scan(checkpoint, args.device, checks, args.eval_tokens, args.seq_len, args.repeats) for name,
             checks in VARIANTS.items()}
    for name, s in scans.items():
        print(f"[{size}] scan {name}: {s['wall_s']:.3f} s (runs {s['walls_s']})  phases {s['phases']}  peak {s['peak_gpu_gb']} GB  tokens "
              f"{s['tokens']}", flush=True)
    main_scan = scans[MAIN]
    naive_run = naive(checkpoint, args.device, main_scan["result"], args.eval_tokens, args.seq_len) if args.naive else {}
    direct_s = direct_load(checkpoint, args.device)
    row = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **environment(args.device),
        "model_size": size,
        "checkpoint": synth.describe(checkpoint),
        "eval_tokens": args.eval_tokens, "seq_len": args.seq_len, "conditions": main_scan["conditions"],
        "floor_s": round(floor_s, 3),
        "scan_s": main_scan["wall_s"],
        "naive_s": naive_run.get("naive_s"),
        "scan_over_floor": round(main_scan["wall_s"] / floor_s, 2),
        "naive_over_scan": round(naive_run["naive_s"] / main_scan["wall_s"], 2) if naive_run else None,
        "extra_condition_cost": main_scan["extra_condition_cost"],
        "peak_gpu_gb": main_scan["peak_gpu_gb"],
        "direct_load_s": round(direct_s, 3),
        "parallel_read_s": reads,
        "resolve_s": resolves,  # first: every shard hashed; cached: the sha256 cache read (the scans below)
        "pinned_copy_gbps": round(bandwidth / 1e9, 2) if bandwidth else None,
        "copy_s": round(copy_s, 3) if copy_s else None,
        "read_over_copy_bandwidth": round(copy_s / read_s, 2) if copy_s else None,  # target >= 0.8
        "scan_over_read": round(main_scan["wall_s"] / read_s, 2),  # target <= 1.5
        "loader": main_scan["loader"],
        "baseline_eval_s": main_scan["phases"]["verify_baseline"],
        "naive": naive_run,
        "variants": {name: {k: v for k, v in s.items() if k != "result"} for name, s in scans.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
    print_row(row)
    return row


def print_row(row: dict) -> None:
    print(f"[{row['model_size']}] floor {row['floor_s']} s | scan {row['scan_s']} s | naive {row['naive_s']} s | "
          f"scan/floor {row['scan_over_floor']} | naive/scan {row['naive_over_scan']} | "
          f"extra condition {row['extra_condition_cost']} of a baseline eval | peak GPU {row['peak_gpu_gb']} GB | "
          f"direct load {row['direct_load_s']} s | read/copy bandwidth {row['read_over_copy_bandwidth']} | "
          f"scan/read {row['scan_over_read']}", flush=True)
    for name, v in row["variants"].items():
        print(f"    {name:7s} scan {v['wall_s']:8.3f} s  extra/cond {v.get('extra_condition_cost')}  phases {v['phases']}", flush=True)
        print(f"            conditions (s): {v['condition_seconds']}", flush=True)


def smollm2() -> dict:
    """The real SmolLM2-135M GGUF scan end to end on this machine: wall time, peak RSS, phases."""
    from catalog import settings

    gguf = settings.home() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    rows = {}
    for name in VARIANTS:
        start = time.perf_counter()
        result = scan(str(gguf), ScanOptions(device="cpu", checks=VARIANTS[name]))
        rows[name] = {"wall_s": round(time.perf_counter() - start, 2), "phases": result.timings,
                      "confirmed": [f"L{w.layer}[{w.row},{w.col}]" for w in result.confirmed],
                      "tokens": sum(a.tokens for a in result.ablations)}
        print(f"[smollm2 cpu] {name}: {rows[name]}", flush=True)
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **environment("cpu"), "model_size": "smollm2-135m-q4_1",
            "scans": rows, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(synth.SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/superweights-bench"))
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-naive", dest="naive", action="store_false")
    parser.add_argument("--repeats", type=int, default=2, help="scans per variant; the fastest is reported")
    parser.add_argument("--read-threads", nargs="+", type=int, default=[8], help="thread counts to time the parallel read with")
    parser.add_argument("--read-chunks", nargs="+", type=int, default=[CHUNK >> 20], help="chunk sizes (MiB) to time it with")
    parser.add_argument("--smollm2", action="store_true", help="also scan the real SmolLM2 GGUF on the CPU")
    args = parser.parse_args(argv)
    rows = [bench_size(size, args) for size in args.sizes]
    if args.smollm2:
        rows.append(smollm2())
    write_results(rows, args.results, f"{args.device.split(':')[0]}-{'-'.join(args.sizes)}")


if __name__ == "__main__":
    main()
