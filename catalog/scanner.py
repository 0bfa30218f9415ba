"""The scan: resolve a source, load it once, detect super weights, verify them causally, and
return a `ScanResult`. Every condition runs on the same loaded weights (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import platform
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from torch import nn

from catalog import __version__
from catalog.architectures import non_finite_parameter
from catalog.causal import verify
from catalog.config import ScanOptions
from catalog.detection import detect
from catalog.errors import BadOptionError, InvalidSourceError, NonFiniteError, ScanOutOfMemoryError, first_line, memory_shortage
from catalog.loading import LoadedModel, in_memory, load
from catalog.options import format_size
from catalog.result import ScanResult, check_finite
from catalog.sources import ResolvedSource, resolve
from catalog.stored import as_stored
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
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return {
        "superweights": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": f"{dev.type}: {name}",
    }


def cpu_name() -> str:
    """The processor's model name where the system gives it (Linux: /proc/cpuinfo), else what Python
    knows: a CPU scan's timings differ more between models of one architecture (AMX or not) than
    `platform.processor()`, empty on Linux, tells."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    names = [value.strip() for key, _, value in (line.partition(":") for line in lines) if key.strip() == "model name"]
    return next((name for name in names if name), None) or platform.processor() or platform.machine() or "cpu"


def scan(source: str | nn.Module, options: ScanOptions | None = None, progress: Progress | None = None, *,
         tokenizer=None, name: str | None = None) -> ScanResult:
    """Scan a source for super weights: a Hub repo id (org/name[@revision]), a checkpoint directory or
    a .gguf file; or a model already in memory with its `tokenizer` (then `name` names it in the
    result, by default its config's `_name_or_path`). `options`: the defaults of `superweights scan`."""
    options = options or ScanOptions()
    if not isinstance(source, str):
        return scan_model(source, tokenizer, options, name=name, progress=progress)
    if tokenizer is not None or name is not None:
        raise BadOptionError("tokenizer",
                             f"{source!r} is read from its files, tokenizer included; tokenizer= and name= are for a model in memory.")
    started = time.perf_counter()
    resolved = resolve(source, allow_pickle=options.allow_pickle)
    seconds = time.perf_counter() - started
    result = scan_source(resolved, options, progress)
    result.timings = {"resolve": round(seconds, 3), **result.timings}
    return result


def scan_model(model: nn.Module, tokenizer, options: ScanOptions, *, name: str | None = None,
               progress: Progress | None = None) -> ScanResult:
    """Scan a loaded transformers model where it is (its device and dtype: `options.device` and
    `options.dtype` do not move it); its weights are as they were when this returns."""
    if tokenizer is None:
        raise BadOptionError("tokenizer", "a model in memory needs its tokenizer: scan(model, options, tokenizer=tokenizer).")
    if options.max_gpu_memory is not None:
        raise BadOptionError("max_gpu_memory", "streaming reads the blocks from a checkpoint; a model in memory is scanned where it is.")
    config = options.to_config()
    name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
    loaded = in_memory(model, tokenizer, name)
    return _checked(name, lambda: _scan_with(loaded, partial(detect, model), partial(verify, model), options, config,
                                             progress or (lambda _m: None)))


def scan_source(source: ResolvedSource, options: ScanOptions, progress: Progress | None = None) -> ScanResult:
    """Scan already-resolved files (the survey resolves in a separate download stage)."""
    say = progress or (lambda _msg: None)
    config = options.to_config()  # reads the evaluation text now: a bad --eval-text fails before loading
    with contextlib.ExitStack() as stack:
        return _checked(source.spec, lambda: _scan_loaded(source, options, config, say, stack))


def _checked(spec: str, run: Callable[[], ScanResult]) -> ScanResult:
    """The result of `run`, refused (naming `spec`) if a number in it is not finite; running out of
    GPU or host memory anywhere in it becomes one `ScanOutOfMemoryError` line."""
    started_at = datetime.now(UTC)
    try:
        result = run()
        result.check_finite()
        result.started_at, result.finished_at = started_at.isoformat(), datetime.now(UTC).isoformat()
        return result
    except NonFiniteError as exc:
        raise InvalidSourceError(spec, str(exc)) from exc
    except (RuntimeError, MemoryError) as exc:
        memory = memory_shortage(exc)
        if memory is None:
            raise
        raise ScanOutOfMemoryError(spec, memory, _allocation(exc)) from exc


def _allocation(exc: BaseException) -> str:
    """What failed to be allocated: of torch's CPU allocator line ("[enforce fail at alloc_cpu.cpp:127]
    err == 0. DefaultCPUAllocator: ...") only the size says anything; CUDA's first line is readable."""
    match = re.search(r"tried to allocate (\d+) bytes", str(exc))
    return f"could not allocate {format_size(int(match.group(1)))}" if match else first_line(exc)


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
    result = _scan_with(loaded, run_detect, run_verify, options, config, say)
    result.super_weights = as_stored(source, loaded, result.super_weights)
    return result


@contextlib.contextmanager
def _weights_blamed(model: nn.Module) -> Iterator[None]:
    """A number that came out NaN or inf, blamed on the weight that made it so where the model
    holds one with NaN or inf (the first), as `discover` names one in the first block."""
    try:
        yield
    except NonFiniteError as exc:
        bad = non_finite_parameter(model)
        if bad is None:
            raise
        raise NonFiniteError(f"a value of {bad}") from exc


def _scan_with(loaded: LoadedModel, run_detect: Callable, run_verify: Callable, options: ScanOptions, config: dict,
               say: Progress) -> ScanResult:
    """Detect, then verify, on a loaded (or streamed) model."""
    timings = {"load": round(loaded.load_seconds, 3)}
    say("detecting")
    start = time.perf_counter()
    sites = loaded.architecture.sites
    prompts = [model_input(loaded, loaded.tokenizer(p, return_tensors="pt").input_ids, "the prompt") for p in options.prompts]
    config["prompt_tokens"] = [ids.shape[1] for ids in prompts]
    with _weights_blamed(loaded.model):
        found = run_detect(prompts, sites, options.rule, options.max_iterations)
        check_finite({"layers": [asdict(layer) for layer in found.layers]})  # before verification computes on them
    timings["detect"] = round(time.perf_counter() - start, 3)
    summary = {"detection_passes": found.iterations, "reference_out_max": found.reference, "loader": loaded.loader,
               "blocks": loaded.architecture.blocks, "mixer_only_layers": loaded.architecture.mixer_only,
               "unrun_layers": loaded.architecture.unrun, **({"shared_weights": sites.shared} if sites.shared else {})}

    ablations, weights = [], found.super_weights
    if options.verify:
        start = time.perf_counter()
        seq_len = min(options.seq_len, loaded.context or options.seq_len)
        windows = model_input(loaded, options.text.windows(loaded.tokenizer, options.eval_tokens, seq_len), "the evaluation text")
        config["seq_len_used"], config["eval_token_count"] = seq_len, windows.numel()
        with _weights_blamed(loaded.model):
            checked = run_verify(windows, sites, weights, options.verification, say)
        ablations, weights = checked.ablations, checked.super_weights
        summary |= checked.summary
        timings["verify"] = round(time.perf_counter() - start, 3)
    return ScanResult(
        loaded.info, config, found.layers, weights, ablations,
        timings=timings, environment=environment(loaded), config_hash=options.config_hash(), summary=summary,
    )
