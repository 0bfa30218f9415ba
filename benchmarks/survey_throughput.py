"""Survey throughput: synthetic Llama checkpoints with a planted super weight, surveyed by
`workers.driver.Survey` on a local Ray instance, with 1 and with 2 GPUs (or on the CPU: `--gpus 0`),
read from the HF cache or downloaded from a loopback stand-in of the Hub at a fixed rate (`--serve`).

    python benchmarks/survey_throughput.py --models 8 --gpus 1 2 --out benchmarks/results
    python benchmarks/survey_throughput.py --size cpu --models 8 --gpus 0 --cpus 2 --serve 200 4  # as root, in a netns

Builds the checkpoints once in a Hub-layout offline cache (HF_HOME/hub/models--bench--llama-N),
random bf16 weights (std 0.02) generated on the GPU, plus the planted chain of Yu et al. 2024:
a large residual component in [BOS]'s embedding, read by one MLP channel of layer 2, whose down
projection weight W[row, col] turns it into a super activation. Each GPU count then surveys all
models into its own fresh SQLite catalog (nothing skipped), in a fresh process and Ray instance,
and writes `survey-throughput-<N>gpu.json`: wall time, models/min, per-scan seconds, and what the
scan found (the planted weight must be found in every model).

With `--serve MB/S...`, each survey instead downloads every model into a fresh HF_HOME from
`tests/hub_server.HubServer` (HF_ENDPOINT on loopback: the real huggingface_hub client), all
connections together paced at that rate, and writes `survey-download-<size>-<N>gpu-<rate>MBps.json`
with, per scan worker, its busy seconds, its idle fraction between its first scan's start and its
last one's end, its wait before the first scan, and its models/min, against the download-bound
limit (rate / model size) and the scan-bound limit (workers / median scan seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # synth, run as a script
sys.path.insert(0, str(ROOT / "tests"))  # tiny's Hub-cache layout

import synth  # noqa: E402
from hub_server import HubServer  # noqa: E402
from tiny import add_to_hub_cache  # noqa: E402

SIZES = {  # TinyLlama-1.1B's shape; "cpu": a scan of a few seconds on a CPU; "tiny" for a CPU dry run of this script
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               vocab_size=32000),
    "cpu": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                vocab_size=8000),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=1000),
}
PLANT = dict(layer=2, row=1234, col=4321, source=77)  # W[row, col] in layer 2; residual dim `source`


def build(hf_home: Path, index: int, size: str, device: str) -> str:
    """One synthetic checkpoint in the offline Hub cache; returns its repo id."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    repo_id = f"bench/llama-{size}-{index}"
    if cached(hf_home, repo_id).exists():
        return repo_id
    shape = SIZES[size]
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, max_position_embeddings=2048, tie_word_embeddings=False)
    with torch.device("meta"):
        names = {k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    gen = torch.Generator(device).manual_seed(index)
    state = {}
    for name, shp in names.items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shp, dtype=torch.bfloat16, device=device)
        else:
            state[name] = (torch.randn(shp, generator=gen, device=device) * 0.02).to(torch.bfloat16)
    p = {k: v % shape["hidden_size"] if k != "col" else v % shape["intermediate_size"] for k, v in PLANT.items() if k != "layer"}
    layer = f"model.layers.{PLANT['layer']}.mlp"
    state["model.embed_tokens.weight"][1, p["source"]] = 100.0  # [BOS] carries the large component
    state[f"{layer}.gate_proj.weight"][p["col"], p["source"]] = 4.0  # (intermediate, hidden)
    state[f"{layer}.up_proj.weight"][p["col"], p["source"]] = 4.0
    state[f"{layer}.down_proj.weight"][p["row"], p["col"]] = -8.0  # (hidden, intermediate)
    hf_home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=hf_home) as staging:  # on the cache's disk
        save_file({k: v.cpu().contiguous() for k, v in state.items()}, f"{staging}/model.safetensors", metadata={"format": "pt"})
        config.architectures = ["LlamaForCausalLM"]
        config.save_pretrained(staging)
        synth.save_tokenizer(shape["vocab_size"], Path(staging))
        add_to_hub_cache(hf_home, repo_id, Path(staging))
    return repo_id


def cached(hf_home: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` at `main` in the cache (what `--serve` serves)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    refs = repo / "refs" / "main"
    return repo / "snapshots" / refs.read_text() if refs.exists() else refs


def eval_text(path: Path, vocab: int) -> Path:
    import random

    rng = random.Random(0)
    text = synth.words(vocab)
    path.write_text("\n".join(" ".join(rng.choices(text, k=16)) for _ in range(600)) + "\n")
    return path


def survey(args: argparse.Namespace) -> dict:
    """One survey of every model on `args.gpus` GPUs (this process owns its Ray instance)."""
    from catalog.config import ScanOptions
    from db.repository import Catalog
    from workers.discovery import from_specs
    from workers.driver import Survey, SurveySettings, start_ray

    db = args.work / f"catalog-{args.gpus}gpu-{time.time_ns()}.db"
    options = ScanOptions(eval_text=args.work / "eval.txt")
    start_ray(None, num_gpus=args.gpus, num_cpus=args.cpus, object_store_memory=2 * 2**30)
    began, started = datetime.now(UTC), time.perf_counter()
    summary = Survey(Catalog(f"sqlite:///{db}"), options, SurveySettings(gpus_per_scan=1.0 if args.gpus else 0, cpus_per_scan=2,
                                                                         prefetch=1)).run(from_specs(specs(args)))
    wall = time.perf_counter() - started
    scans = Catalog(f"sqlite:///{db}").scans()
    first, last = min(s.started_at for s in scans), max(s.finished_at for s in scans)
    scanned = [r for r in summary.rows if r.status == "scanned"]
    found = [s for s in scans if s.result and any(
        (w.layer, w.row, w.col) == (PLANT["layer"], PLANT["row"] % s.result.model.hidden_size,
                                    PLANT["col"] % s.result.model.intermediate_size)
        for w in s.result.super_weights)]
    timings = [s.result.timings for s in scans if s.result]
    done = {s.source: s.finished_at for s in scans}
    firsts = {}
    for r in sorted(scanned, key=lambda r: done[r.spec]):
        firsts.setdefault(r.pid, done[r.spec])
    warm = max(firsts.values())  # every worker has finished its first scan (CUDA and kernel warm-up)
    steady = [r for r in scanned if done[r.spec] > warm]
    steady_span = (max(done.values()) - warm).total_seconds()
    return {
        "gpus": args.gpus, "models": args.models, "size": args.size,
        "num_parameters": scans[0].result.model.num_parameters if scans[0].result else None,
        "scanned": len(scanned), "failed": summary.count("failed"), "planted_found": len(found),
        "wall_seconds": round(wall, 2), "models_per_min": round(60 * len(scanned) / wall, 2),
        "scan_span_seconds": round((last - first).total_seconds(), 2),
        "models_per_min_scanning": round(60 * len(scanned) / (last - first).total_seconds(), 2),
        "steady_models_per_min": round(60 * len(steady) / steady_span, 2) if steady else None,
        "steady_scans": len(steady), "steady_span_seconds": round(steady_span, 2),
        "warmup_seconds_to_all_workers_warm": round((warm - first).total_seconds() + (wall - (last - first).total_seconds()), 2),
        "per_scan_seconds": {"median": round(statistics.median(r.seconds for r in scanned), 2),
                             "min": min(r.seconds for r in scanned), "max": max(r.seconds for r in scanned)},
        "per_scan_stage_median": {k: round(statistics.median(t.get(k, 0) for t in timings), 3) for k in ("load", "detect", "verify")},
        "workers": summary.workers, "per_worker": worker_use(scans, summary.rows, began),
        "errors": [r.error for r in summary.rows if r.error],
        "environment": scans[0].result.environment if scans[0].result else {},
    }


def specs(args: argparse.Namespace) -> list[str]:
    return [f"bench/llama-{args.size}-{i}" for i in range(args.models)]


def worker_use(scans: list, rows: list, began: datetime) -> list[dict]:
    """Per scan worker (process): busy seconds (its scans), the idle fraction between its first scan's
    start and its last one's end (waiting for a download, or for the driver), the wait before its
    first scan (worker start and first download, separately), and its models per minute over that span."""
    pids = {r.spec: r.pid for r in rows if r.status == "scanned"}
    by_pid: dict[int, list] = {}
    for scan in sorted((s for s in scans if s.result), key=lambda s: s.started_at):
        by_pid.setdefault(pids[scan.source], []).append(scan)
    use = []
    for pid, done in sorted(by_pid.items()):
        busy = sum((s.finished_at - s.started_at).total_seconds() for s in done)
        span = (done[-1].finished_at - done[0].started_at).total_seconds()
        gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in zip(done, done[1:])]
        use.append({"pid": pid, "scans": len(done), "busy_seconds": round(busy, 2), "span_seconds": round(span, 2),
                    "idle_fraction": round(1 - busy / span, 4) if span else 0.0,
                    "initial_wait_seconds": round((done[0].started_at - began).total_seconds(), 2),
                    "gap_seconds": {"median": round(statistics.median(gaps), 3), "max": round(max(gaps), 3)} if gaps else None,
                    "models_per_min": round(60 * len(done) / span, 2) if span else None})
    return use


def limits(result: dict, rate: float | None, served: HubServer | None) -> dict:
    """The two bounds on models/min: the scan stage's (workers / median scan) and, when the models are
    downloaded, the link's (rate / model size), with the downloads as the stand-in saw them."""
    scan_bound = 60 * result["workers"] / result["per_scan_seconds"]["median"]
    out = {"scan_bound_models_per_min": round(scan_bound, 2)}
    if served is None or rate is None:
        return out
    size = statistics.median(sum(f.size for f in repo.files.values()) for repo in served.repos.values())
    per_repo: dict[str, list] = {}
    for t in served.transfers:
        per_repo.setdefault(t.repo, []).append(t)
    seconds = [max(t.finished for t in ts) - min(t.started for t in ts) for ts in per_repo.values()]
    download_bound = 60 * rate * 1e6 / size
    return out | {
        "rate_MBps": rate, "model_bytes": int(size), "download_seconds_at_rate": round(size / (rate * 1e6), 2),
        "download_seconds_measured": {"median": round(statistics.median(seconds), 2), "max": round(max(seconds), 2)},
        "bytes_served": served.bytes_served(), "models_downloaded": len(per_repo),
        "download_bound_models_per_min": round(download_bound, 2),
        "limit_models_per_min": round(min(scan_bound, download_bound), 2),
        # as measured: the stand-in and the client together may not reach the rate asked for
        "download_faster_than_scan": statistics.median(seconds) < result["per_scan_seconds"]["median"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--size", choices=SIZES, default="1b")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/survey-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per survey")
    ap.add_argument("--serve", type=float, nargs="+", metavar="MB/S",
                    help="download the models from a loopback stand-in of the Hub at each of these rates (one survey each)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one survey, JSON on stdout
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)  # child: download from this stand-in, into a fresh HF_HOME
    args = ap.parse_args()
    hf_home = args.work / "hf"
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", SUPERWEIGHTS_HOME=str(args.work / "home"))
    if args.endpoint:
        os.environ.update(HF_HOME=str(args.work / f"hf-download-{time.time_ns()}"), HF_ENDPOINT=args.endpoint, HF_HUB_OFFLINE="0")
    if args.one:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        args.gpus = args.gpus[0]
        try:
            print("RESULT " + json.dumps(survey(args)), flush=True)
        finally:
            if args.endpoint:  # the downloads: each survey's own, 26 GB for 12 models of 1b
                shutil.rmtree(os.environ["HF_HOME"], ignore_errors=True)
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(args.models):
        build(hf_home, i, args.size, device)
    eval_text(args.work / "eval.txt", SIZES[args.size]["vocab_size"])
    print(f"built {args.models} {args.size} checkpoints in {time.perf_counter() - t0:.1f}s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for gpus in args.gpus:
        for rate in args.serve or [None]:
            with HubServer(rate * 1e6) if rate else contextlib.nullcontext() as served:
                for repo_id in specs(args) if served else []:
                    served.add(repo_id, cached(hf_home, repo_id))
                load = os.getloadavg()
                result = one_survey(args, gpus, served)
                result |= limits(result, rate, served) | {"load_average_before": load, "load_average_after": os.getloadavg()}
            name = f"survey-download-{args.size}-{gpus}gpu-{rate:g}MBps" if rate else f"survey-throughput-{gpus}gpu"
            (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"{name}: {result['scanned']}/{args.models} scanned ({result['planted_found']} with the planted weight) "
                  f"in {result['wall_seconds']}s: {result['models_per_min']} models/min ({result['steady_models_per_min']} once warm), "
                  f"median scan {result['per_scan_seconds']['median']}s, stages {result['per_scan_stage_median']}", flush=True)
            print(f"  limits {({k: v for k, v in result.items() if k.endswith('_bound_models_per_min')})}; per worker "
                  f"{[(w['idle_fraction'], w['initial_wait_seconds'], w['models_per_min']) for w in result['per_worker']]} "
                  f"(idle fraction, initial wait s, models/min); load {result['load_average_before']}", flush=True)


def one_survey(args: argparse.Namespace, gpus: int, served: HubServer | None) -> dict:
    """One survey in a child process (its own Ray instance); downloading from `served` if given."""
    cmd = [sys.executable, __file__, "--one", "--models", str(args.models), "--size", args.size, "--gpus", str(gpus),
           "--cpus", str(args.cpus), "--work", str(args.work), *(["--endpoint", served.url] if served else [])]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        run = subprocess.CompletedProcess(cmd, -1, exc.stdout or "", exc.stderr or "")
    (args.work / f"survey-{gpus}gpu.log").write_text(str(run.stdout) + "\n" + str(run.stderr))
    line = next((out for out in str(run.stdout).splitlines() if out.startswith("RESULT ")), None)
    if line is None:
        print(str(run.stdout)[-3000:], str(run.stderr)[-5000:], sep="\n")
        raise SystemExit(f"survey on {gpus} GPU(s) failed")
    return json.loads(line.removeprefix("RESULT "))


if __name__ == "__main__":
    main()
