"""Whole checkpoints under round-to-nearest, to show on disk what `--quant-check` measures in memory:
that writing the super weights back after quantizing (a restore file) rescues it (Yu et al. 2024,
Sec. 4.2).

`quantize_copy` writes a copy of a safetensors checkpoint whose down projections are quantized
and dequantized exactly as `--quant-check` does it (`catalog.quantization.quantized`);
`evaluate_checkpoints` evaluates checkpoints on the windows a scan with the same options reads,
so that each can be paired with a baseline (`catalog.perplexity.paired_interval`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from catalog.config import ScanOptions
from catalog.loading import load
from catalog.perplexity import Evaluation, evaluate, frequent_tokens
from catalog.quantization import quantized
from catalog.restore import staged
from catalog.sources import resolve

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def quantize_copy(checkpoint: Path, out: Path, bits: int, block: int, clip_quantile: float | None = None) -> None:
    """Write `checkpoint` to `out` with every down projection RTN-quantized (then dequantized)."""
    loaded = load(resolve(str(checkpoint)), device="cpu")
    with staged(Path(out), Path(checkpoint)) as staging:
        shutil.copytree(checkpoint, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*WEIGHT_FILES))
        with quantized(loaded.architecture.sites, bits, block, clip_quantile):
            loaded.model.save_pretrained(staging)


def evaluate_checkpoints(checkpoints: list[Path], options: ScanOptions) -> list[Evaluation]:
    """Each checkpoint's per-segment NLL on the evaluation windows of a scan with `options`."""
    evaluations = []
    for path in checkpoints:
        loaded = load(resolve(str(path)), device=options.device, dtype=options.dtype)
        seq_len = min(options.seq_len, loaded.context or options.seq_len)
        windows = options.text.windows(loaded.tokenizer, options.eval_tokens, seq_len)  # (n_windows, seq_len)
        evaluations.append(evaluate(loaded.model, windows, frequent_tokens(windows), parts=options.checks.parts))
    return evaluations
