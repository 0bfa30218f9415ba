"""The scan: resolve a source, load it once, detect super weights, verify them causally, and
return a `ScanResult`. Every condition runs on the same loaded weights (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import torch

from catalog import __version__
from catalog.causal import verify
from catalog.config import ScanOptions
from catalog.detection import detect
from catalog.errors import InvalidSourceError, NonFiniteError
from catalog.loading import LoadedModel, load
from catalog.result import ScanResult, check_finite
from catalog.sources import ResolvedSource, resolve
from catalog.streaming import open_streamed

Progress = Callable[[str], None]


def model_input(loaded: LoadedModel, ids: torch.Tensor, what: str) -> torch.Tensor:
    """Token ids (batch, seq) as the model can take them: cut to its context (the lengths used go into
    the scan's config), every id a row of its embedding (else the tokenizer is not the weights')."""
    if loaded.context is not None:
        ids = ids[:, : loaded.context]
    if ids.numel() and (largest := int(ids.max())) >= loaded.vocabulary:
        raise InvalidSourceError(loaded.info.source, f"its tokenizer gives token id {largest} for {what}, but the embedding has "
                                                     f"{loaded.vocabulary} rows: the tokenizer does not belong to these weights.")
    return ids.to(loaded.device)


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
    try:
        with contextlib.ExitStack() as stack:
            result = _scan_loaded(source, options, config, say, stack)
        result.check_finite()
        return result
    except NonFiniteError as exc:
        raise InvalidSourceError(source.spec, str(exc)) from exc


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
    prompts = [model_input(loaded, loaded.tokenizer(p, return_tensors="pt").input_ids, "the prompt") for p in options.prompts]
    config["prompt_tokens"] = [ids.shape[1] for ids in prompts]
    found = run_detect(prompts, sites, options.rule, options.max_iterations)
    check_finite({"layers": [asdict(layer) for layer in found.layers]})  # before verification computes on them
    timings["detect"] = round(time.perf_counter() - start, 3)
    summary = {"detection_passes": found.iterations, "reference_out_max": found.reference, "loader": loaded.loader,
               "blocks": loaded.architecture.blocks, "mixer_only_layers": loaded.architecture.mixer_only}

    ablations, weights = [], found.super_weights
    if options.verify:
        start = time.perf_counter()
        seq_len = min(options.seq_len, loaded.context or options.seq_len)
        windows = model_input(loaded, options.text.windows(loaded.tokenizer, options.eval_tokens, seq_len), "the evaluation text")
        config["seq_len_used"], config["eval_token_count"] = seq_len, windows.numel()
        checked = run_verify(windows, sites, weights, options.verification, say)
        ablations, weights = checked.ablations, checked.super_weights
        summary |= checked.summary
        timings["verify"] = round(time.perf_counter() - start, 3)
    return ScanResult(
        loaded.info, config, found.layers, weights, ablations,
        timings=timings, environment=environment(loaded), config_hash=options.config_hash(), summary=summary,
    )
