"""SmolLM2-135M on disk: int4 RTN with clipping of the down projections, then the restore file
written back, against what `scan --quant-check` predicts for it (README "Keep lists for quantizers").

1. the SmolLM2 GGUF (`make fixtures`) as a safetensors checkpoint (transformers dequantizes it);
2. `superweights scan CHECKPOINT --quant-check` into a catalog of its own;
3. `superweights export --keep-list FORMAT` for every format (printed), the restore file kept;
4. `catalog.checkpoints.quantize_copy`: int4 RTN of the down projections, clipped as the scan clips;
5. `superweights apply-restore` of the restore file onto that copy;
6. the perplexity of the checkpoint, the quantized copy and the restored copy on the scan's
   evaluation windows (every window), each paired with the checkpoint's.

    python benchmarks/restore_demo.py --work /tmp/restore-demo --verdict all

One JSON file goes to `--results`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from record import write_results

from catalog import settings
from catalog.config import ScanOptions, VerifyOptions

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(*args: str) -> str:
    """One `superweights` command, echoed; its stdout."""
    print("$ superweights " + shlex.join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "catalog", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    print(done.stdout + done.stderr, end="", flush=True)
    return done.stdout


def checkpoint_from_gguf(models: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(models, gguf_file=GGUF)  # dequantized to float32 on load
    model.hf_quantizer = None  # transformers refuses to save what it read from GGUF; the weights in memory are plain
    vars(model.config).pop("quantization_config", None)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(models, gguf_file=GGUF).save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="A new directory for the checkpoints and the catalog.")
    parser.add_argument("--verdict", choices=["confirmed", "all"], default="all",
                        help="Which weights the restore file holds ('all': what --quant-check's keep SW rows keep).")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work, checks = args.work, VerifyOptions(quant_check=True)
    work.mkdir(parents=True)
    checkpoint, db = work / "smollm2", f"sqlite:///{work / 'catalog.db'}"
    checkpoint_from_gguf(settings.home() / "models", checkpoint)
    run("scan", str(checkpoint), "--quant-check", "--device", "cpu", "--db", db)
    lists = {fmt: run("export", "--keep-list", fmt, str(checkpoint), "--verdict", args.verdict, "--db", db)
             for fmt in ("llama.cpp", "bitsandbytes", "llm-compressor", "restore")}
    (work / "restore.json").write_text(lists["restore"])
    measured = measure(work, checkpoint, checks)
    rows = scan_rows(db, checkpoint, checks.quant_block)
    record = {"model": GGUF, "verdict": args.verdict, "keep_lists": lists, "measured": measured, "scan_rows": rows,
              "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    print(json.dumps({"measured": measured, "scan_rows": rows}, indent=2))
    write_results(record, args.results, "restore-smollm2")


def measure(work: Path, checkpoint: Path, checks: VerifyOptions) -> dict:
    """Quantize a copy, restore it, and pair each checkpoint's perplexity with the original's."""
    from catalog.checkpoints import evaluate_checkpoints, quantize_copy
    from catalog.perplexity import paired_interval

    print(f"quantize_copy({checkpoint}, int4, bits=4, block={checks.quant_block}, clip_quantile={checks.clip_quantile})", flush=True)
    quantize_copy(checkpoint, work / "int4", 4, checks.quant_block, checks.clip_quantile)
    run("apply-restore", str(work / "restore.json"), str(work / "int4"), "--out", str(work / "int4-restored"))
    names = ("baseline", "int4 + clip", "int4 + clip + restore")
    evaluations = evaluate_checkpoints([checkpoint, work / "int4", work / "int4-restored"], ScanOptions(device="cpu", checks=checks))
    base = evaluations[0]
    return {name: {"ppl": ev.ppl, "tokens": ev.tokens, **vars(paired_interval(ev, base))} for name, ev in zip(names, evaluations)}


def scan_rows(db: str, checkpoint: Path, block: int) -> dict:
    from db.reads import CatalogReader

    result = CatalogReader(db).latest(str(checkpoint)).result
    wanted = {f"int4 RTN block {block} + clip", f"int4 RTN block {block} + clip + keep SW"}
    return {a.name: {"ratio": a.ratio, "low": a.ratio_low, "high": a.ratio_high, "windows": a.windows, "ppl": a.ppl}
            for a in result.ablations if a.name in wanted}


if __name__ == "__main__":
    main()
