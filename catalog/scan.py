"""The scan: resolve a source, load it once, detect super weights, verify them causally, and
return a `ScanResult`. Every condition runs on the same loaded weights (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path

import torch

from catalog import __version__
from catalog.causal import VerifyOptions, verify
from catalog.detection import SpikeRule, detect
from catalog.errors import BadOptionError
from catalog.evaltext import EvalText, load_eval_text
from catalog.loading import LoadedModel, load
from catalog.result import ScanResult
from catalog.sources import ResolvedSource, resolve
from catalog.streaming import open_streamed

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."  # the paper's detection prompt

Progress = Callable[[str], None]


@dataclass
class ScanOptions:
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

    def validate(self) -> None:
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


def environment(loaded: LoadedModel) -> dict[str, str]:
    import transformers

    dev = loaded.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {
        "superweights": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": f"{dev.type}: {name}",
    }


def scan(spec: str, options: ScanOptions, progress: Progress | None = None) -> ScanResult:
    options.validate()
    started = time.perf_counter()
    source = resolve(spec, allow_pickle=options.allow_pickle)
    resolved = time.perf_counter() - started
    result = scan_source(source, options, progress)
    result.timings = {"resolve": round(resolved, 3), **result.timings}
    return result


def scan_source(source: ResolvedSource, options: ScanOptions, progress: Progress | None = None) -> ScanResult:
    """Scan already-resolved files (the survey resolves in a separate download stage)."""
    say = progress or (lambda _msg: None)
    options.validate()
    config = options.to_config()  # reads the evaluation text now: a bad --eval-text fails before loading
    with contextlib.ExitStack() as stack:
        return _scan_loaded(source, options, config, say, stack)


def _scan_loaded(source: ResolvedSource, options: ScanOptions, config: dict, say: Progress, stack: contextlib.ExitStack) -> ScanResult:
    """Load (or, under a memory budget, open for streaming), detect, verify."""
    say(f"loading {source.spec}")
    where = {"device": options.device, "dtype": options.dtype, "trust_remote_code": options.trust_remote_code}
    if options.max_gpu_memory is None:
        loaded = load(source, **where)
        run_detect, run_verify = partial(detect, loaded.model), partial(verify, loaded.model)
    else:
        streamed = open_streamed(source, stack, budget=options.max_gpu_memory, **where)
        loaded, run_detect, run_verify = streamed.loaded, streamed.detect, streamed.verify
    timings = {"load": round(loaded.load_seconds, 3)}

    say("detecting")
    start = time.perf_counter()
    sites = loaded.architecture.sites
    prompts = [loaded.tokenizer(p, return_tensors="pt").input_ids.to(loaded.device) for p in options.prompts]
    found = run_detect(prompts, sites, options.rule, options.max_iterations)
    timings["detect"] = round(time.perf_counter() - start, 3)
    summary = {"detection_passes": found.iterations, "reference_out_max": found.reference, "loader": loaded.loader,
               "blocks": loaded.architecture.blocks, "mixer_only_layers": loaded.architecture.mixer_only}

    ablations, weights = [], found.super_weights
    if options.verify:
        start = time.perf_counter()
        windows = options.text.windows(loaded.tokenizer, options.eval_tokens, options.seq_len)
        config["eval_token_count"] = windows.numel()
        checked = run_verify(windows, sites, weights, options.verification, say)
        ablations, weights = checked.ablations, checked.super_weights
        summary |= checked.summary
        timings["verify"] = round(time.perf_counter() - start, 3)
    return ScanResult(
        loaded.info, config, found.layers, weights, ablations,
        timings=timings, environment=environment(loaded), config_hash=options.config_hash(), summary=summary,
    )
