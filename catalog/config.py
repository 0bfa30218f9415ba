"""What a scan is configured by: the options of detection, the causal checks and the scan.

Plain dataclasses without torch, so that the command line can build its options (and show their
defaults) without importing the scanner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from catalog.errors import BadOptionError

if TYPE_CHECKING:
    from catalog.evaltext import EvalText

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."  # the paper's detection prompt
PARTS = 4  # segments per window: the paired observations of an interval


@dataclass(frozen=True)
class SpikeRule:
    """When a layer's down projection counts as spiking; recorded in the scan's `config`."""

    ratio: float = 50.0  # max |output| over the median of all layers' max |output|
    min_abs: float = 0.0  # and at least this large in absolute terms

    def to_config(self) -> dict[str, float]:
        return {f"spike_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VerifyOptions:
    """Thresholds and sizes of the causal checks; recorded in the scan's `config`."""

    confirm_ratio: float = 2.0
    control_max: float = 1.1
    # control B zeroes this fraction of all down-projection weights, largest magnitude first: the
    # paper's 7000 non-super-weight outliers of Llama-7B's 1.44e9 down-projection weights
    outlier_fraction: float = 7000 / 1.44e9
    seed: int = 0
    quant_check: bool = False
    quant_block: int = 128
    clip_quantile: float = 1e-4
    batch_size: int = 4
    share_prefix: bool = True
    early_stop: bool = True
    stop_precision: float = 0.05  # rows without a threshold stop when the ratio is known within +-5%
    parts: int = PARTS  # segments per window, the observations of an interval (early stopping)

    def to_config(self) -> dict:
        config = asdict(self)
        del config["share_prefix"]  # exact up to rounding: the same scan either way
        if not self.early_stop:  # full evaluation keeps the config (and catalog key) it always had
            del config["early_stop"], config["stop_precision"], config["parts"]
        return config


@dataclass
class ScanOptions:
    """Everything a scan is told; checked once, when built, so a bad value fails before any model loads."""

    device: str = "auto"
    dtype: str = "auto"
    prompts: list[str] = field(default_factory=lambda: [DEFAULT_PROMPT])
    max_iterations: int = 3
    rule: SpikeRule = field(default_factory=SpikeRule)
    trust_remote_code: bool = False
    allow_pickle: bool = False
    verify: bool = True
    eval_text: Path | None = None  # None: wikitext-2 when eval_dataset says so, else the offline default
    eval_dataset: str | None = None
    eval_tokens: int = 4096
    seq_len: int = 512
    checks: VerifyOptions = field(default_factory=VerifyOptions)
    max_gpu_memory: int | None = None  # bytes; set: stream the blocks (`catalog.streaming`), the same scan

    def __post_init__(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise BadOptionError("--prompt", "empty prompt; give some text, e.g. --prompt 'Apple Inc. is a worldwide tech company.'")
        if self.max_iterations < 1:
            raise BadOptionError("--max-iterations", "must be at least 1.")
        if self.verify and not 2 <= self.seq_len <= self.eval_tokens:
            raise BadOptionError("--seq-len", f"must be between 2 and --eval-tokens ({self.eval_tokens}).")

    @property
    def verification(self) -> VerifyOptions:
        """The checks as run and recorded: a streamed pass carries every window, so it evaluates
        every condition fully (early stopping off), whatever `checks` asks."""
        return self.checks if self.max_gpu_memory is None else replace(self.checks, early_stop=False)

    @cached_property
    def text(self) -> EvalText:
        from catalog.evaltext import load_eval_text  # torch: only when a scan reads its text

        return load_eval_text(self.eval_text, self.eval_dataset)

    def to_config(self) -> dict:
        """What determines the result: two scans with equal configs of one revision are the same scan."""
        config = {"prompts": list(self.prompts), "max_iterations": self.max_iterations, "dtype": self.dtype, **self.rule.to_config()}
        if self.verify:
            config |= {"eval_text": self.text.name, "eval_sha256": self.text.sha256, "eval_tokens": self.eval_tokens,
                       "seq_len": self.seq_len, **self.verification.to_config()}
        return config

    def config_hash(self) -> str:
        """Stable key of `to_config()`: the catalog keys scans by (source, revision, this)."""
        blob = json.dumps(self.to_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
