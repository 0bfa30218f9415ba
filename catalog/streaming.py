"""Layer streaming (`--max-gpu-memory`): scan a model larger than the GPU budget.

The model is built without weights (its parameters on the meta device); only the embeddings,
the final norm, the head and the rotary buffers are put on the device. Each pass then reads one
block at a time from the safetensors shards onto the device (`catalog.reader`; the next block is
read in a background thread while the current one computes), runs every stream's hidden states
through it and frees it: at most two blocks of weights are resident at once. Control B's top-k
reads each down projection onto the device in turn before the verification pass.

Verification is one pass over the blocks carrying every condition: the baseline windows, and,
forked from the baseline's input to the block where the condition first changes something (the
prefix sharing of `catalog.prefix`, streamed), each condition's own hidden states. A condition's
context (`catalog.causal.conditions`) is entered per block around that block's call only: its
zeroed scalars and quantized matrices in other blocks sit on the meta device, where writes are
no-ops. The head and loss are the model's own: the final hidden states are replayed into its
forward with `PrefixCache.replaying`. Detection makes one pass per iteration (a short prompt).

Supported: safetensors checkpoints of the model types whose blocks take Llama's call and return
the hidden-state tensor (`STREAMABLE`); anything else is refused with one line.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import nn

from catalog.architectures import DownProjection
from catalog.causal import ActivationRecorder, Condition, Evaluated, Verification, VerifyOptions, conditions, report
from catalog.detection import Detection, SpikeRule, candidate, iterate, weight_entries
from catalog.errors import BadOptionError
from catalog.hooks import Capture, Entries, capture, zeroed
from catalog.loading import (LoadedModel, as_invalid, assign, buffers_to, checkpoint_names, model_info, open_source, place,
                             skeleton)
from catalog.reader import ShardReader, checkpoint_shards
from catalog.perplexity import Evaluation, evaluate, frequent_tokens
from catalog.prefix import PrefixCache
from catalog.result import SuperWeight
from catalog.sources import ResolvedSource

STREAMABLE = ("llama", "mistral", "qwen2", "qwen3")
OPTION = "--max-gpu-memory"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
BlockCall = tuple[torch.Tensor, dict]  # a block's hidden-state input and the other arguments of its call
BlockContext = Callable[[int], contextlib.AbstractContextManager]  # what a stream changes while block `layer` runs


def parse_size(text: str) -> int:
    """Bytes of a size such as 4GiB, 500MB or 2.5GB (decimal and binary units)."""
    match = SIZE.match(text)
    if not match or match.group(2).lower() not in UNITS:
        raise BadOptionError(OPTION, f"cannot read {text!r} as a size; write e.g. 4GiB or 500MB.")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise BadOptionError(OPTION, "must be more than zero.")
    return size


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that leaves at least 1 (1000 B, 1.5 MiB, 4.00 GiB)."""
    unit = next((u for u in ("TiB", "GiB", "MiB", "KiB") if size >= UNITS[u.lower()]), "B")
    return f"{size} B" if unit == "B" else f"{size / UNITS[unit.lower()]:.2f} {unit}"


@dataclass
class ShardStore:
    """Reads tensors by name from a checkpoint's safetensors shards (`catalog.reader`); counts the
    block bytes read onto the device and not yet released (`resident`, `peak`), so that tests can
    bound them."""

    reader: ShardReader
    resident: int = 0
    peak: int = 0

    @classmethod
    def open(cls, source: ResolvedSource, stack: contextlib.ExitStack, device: torch.device, dtype: torch.dtype) -> ShardStore:
        return cls(stack.enter_context(ShardReader.open(checkpoint_shards(source.path), device, dtype=dtype)))

    def read_block(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor named `prefix...`, on the device, keyed by its name inside the block."""
        names = [n for n in self.reader.spans if n.startswith(prefix)]
        tensors = {name.removeprefix(prefix): t for name, t in self.reader.read(names).items()}
        self.resident += sum(t.nbytes for t in tensors.values())
        self.peak = max(self.peak, self.resident)
        return tensors

    def release(self, tensors: dict[str, torch.Tensor]) -> None:
        self.resident -= sum(t.nbytes for t in tensors.values())


@contextlib.contextmanager
def resident(module: nn.Module, tensors: dict[str, torch.Tensor], store: ShardStore) -> Iterator[None]:
    """The module's parameters hold `tensors` inside the block; back on the meta device after."""
    try:
        for name, tensor in tensors.items():
            assign(module, name, tensor)
        yield
    finally:
        for name, tensor in tensors.items():
            assign(module, name, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"))
        store.release(tensors)


class _Captured(Exception):
    def __init__(self, call: BlockCall) -> None:
        self.call = call


def block_input(model: nn.Module, first: nn.Module, ids: torch.Tensor) -> BlockCall:
    """The first block's call for `ids`, from the model's own forward (embeddings, mask, rotary
    embeddings), stopped before the first block runs."""
    def stop(module, args, kwargs):
        raise _Captured((args[0], kwargs) if args else (kwargs.pop("hidden_states"), kwargs))
    handle = first.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _Captured as captured:
        return captured.call
    finally:
        handle.remove()
    raise AssertionError("the model never called its first block")


@dataclass
class Stream:
    """Hidden states of one evaluation (baseline, a condition, a detection prompt), batch by
    batch, and the change it makes to whichever block it runs through."""

    hidden: list[torch.Tensor]
    kwargs: list[dict]
    context: BlockContext

    def fork(self, context: BlockContext) -> Stream:
        return Stream(list(self.hidden), self.kwargs, context)

    def through(self, layer: int, block: nn.Module) -> None:
        with self.context(layer):
            self.hidden = [block(h, **kw) for h, kw in zip(self.hidden, self.kwargs)]


def per_block(entries: Entries, sites: list[DownProjection]) -> BlockContext:
    """`zeroed(entries)` for one block at a time: the scalars grouped by block once, not at every
    block (control B zeroes ~7000, in every block)."""
    layer_of = {id(site.weight): site.layer for site in sites}
    by_layer: dict[int, Entries] = {}
    for tensor, index in entries:
        by_layer.setdefault(layer_of[id(tensor)], []).append((tensor, index))
    return lambda layer: zeroed(by_layer.get(layer, []))


def block_context(condition: Condition, sites: list[DownProjection]) -> BlockContext:
    """A condition's change to one block: its own block's zeroed scalars, or its whole context
    (quantized matrices, +SA's write-back), whose changes outside the resident block fall on meta tensors."""
    if condition.zeroes is not None and condition.per_sample is None:
        return per_block(condition.zeroes(), sites)
    return lambda layer: condition.context()


@dataclass
class StreamedModel:
    """A model whose blocks live in the checkpoint until a pass reads them, one at a time."""

    loaded: LoadedModel
    blocks: nn.ModuleList
    store: ShardStore

    def layers(self) -> Iterator[tuple[int, nn.Module]]:
        """Each block in turn with its weights on the device; the next one is read meanwhile."""
        prefix = [f"{self.loaded.adapter.blocks}.{i}." for i in range(len(self.blocks))]
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.store.read_block, prefix[0])
            for i, block in enumerate(self.blocks):
                tensors = pending.result()
                if i + 1 < len(self.blocks):
                    pending = pool.submit(self.store.read_block, prefix[i + 1])
                with resident(block, tensors, self.store):
                    yield i, block

    def inputs(self, ids: list[torch.Tensor]) -> list[BlockCall]:
        return [block_input(self.loaded.model, self.blocks[0], batch.to(self.loaded.device)) for batch in ids]

    @torch.inference_mode()
    def detect(self, prompts: list[torch.Tensor], sites: list[DownProjection], rule: SpikeRule, max_iterations: int) -> Detection:
        """`catalog.detection.detect`, one streamed pass per iteration."""
        calls = self.inputs(prompts)
        return iterate(lambda found, iteration: self._detection_pass(calls, sites, found, iteration), sites, rule, max_iterations)

    def _detection_pass(self, calls: list[BlockCall], sites: list[DownProjection], found: list[SuperWeight],
                        iteration: int) -> tuple[dict[int, Capture], Callable[[int], SuperWeight]]:
        """Per site the largest-spike capture over the prompts (`detection.run_prompts`), with
        `found` zeroed, and the candidate it names (read while its block is resident: every site's)."""
        zero_found = per_block(weight_entries(sites, found), sites)
        streams = [Stream([h], [kw], zero_found) for h, kw in calls]
        best: dict[int, Capture] = {}
        named: dict[int, SuperWeight] = {}
        with capture(sites) as captured:
            for layer, block in self.layers():
                for stream in streams:
                    stream.through(layer, block)
                    for i in (i for i, site in enumerate(sites) if site.layer == layer):
                        if i not in best or captured[i].out_max > best[i].out_max:
                            best[i] = captured[i]
                            named[i] = candidate(sites[i], captured[i], iteration)
        return best, named.__getitem__

    @torch.inference_mode()
    def verify(self, windows: torch.Tensor, sites: list[DownProjection], weights: list[SuperWeight],
               options: VerifyOptions, progress: Callable[[str], None] = lambda _m: None) -> Verification:
        """`catalog.causal.verify` (with its prefix sharing) in one streamed pass over the blocks; the
        pass carries every window, so `options.early_stop` is not used (`ScanOptions.verification`)."""
        stopwords = frequent_tokens(windows)
        recorder = ActivationRecorder(sites, weights)
        plan = conditions(sites, weights, options, recorder, weight_of=self._read_weight) if weights else []
        base = Stream(*map(list, zip(*self.inputs(windows.split(options.batch_size)))), context=lambda layer: recorder.record())
        streams: dict[str, Stream] = {}
        for layer, block in self.layers():
            progress(f"verifying, streamed: block {layer + 1}/{len(self.blocks)}, {len(plan) + 1} conditions")
            streams |= {c.name: base.fork(block_context(c, sites)) for c in plan if c.first_layer == layer}
            base.through(layer, block)
            for stream in streams.values():
                stream.through(layer, block)
        started = time.perf_counter()
        baseline = self._evaluation(windows, stopwords, base, options.batch_size)
        head_seconds = time.perf_counter() - started
        evaluated = [Evaluated(c, self._evaluation(windows, stopwords, streams[c.name], options.batch_size), c.first_layer) for c in plan]
        evaluation = {"prefix_shared": True, "early_stop": False, "streamed": True,
                      "head_seconds": round(head_seconds, 4)}  # the head and loss of one condition, after the pass
        return report(baseline, evaluated, recorder, weights, options, evaluation)

    def _read_weight(self, site: DownProjection) -> torch.Tensor:
        """A down projection's values on the device, for control B's top-k (one at a time, freed after)."""
        return self.store.reader.read([site.param])[site.param]

    def _evaluation(self, windows: torch.Tensor, stopwords: torch.Tensor, stream: Stream, batch_size: int) -> Evaluation:
        """Perplexity from a stream's final hidden states, through the model's own norm and head."""
        final = PrefixCache.replaying(self.blocks, {len(self.blocks): torch.cat(stream.hidden)})
        with final.skipping(len(self.blocks)):
            return evaluate(self.loaded.model, windows, stopwords, batch_size)


def open_streamed(source: ResolvedSource, stack: contextlib.ExitStack, *, budget: int, device: str = "auto",
                  dtype: str = "auto", trust_remote_code: bool = False) -> StreamedModel:
    """The model skeleton with its non-block weights on the device; blocks stay in the shards."""
    start = time.perf_counter()
    if source.format != "safetensors" or source.gguf_file:
        _unstreamable(source, source.format)
    opened = open_source(source, device, dtype, trust_remote_code)
    if opened.config.model_type not in STREAMABLE:
        _unstreamable(source, f"model type {opened.config.model_type!r}")
    blocks = opened.adapter.blocks
    with as_invalid(source):
        model = skeleton(opened.config, opened.dtype, trust_remote_code)
        store = ShardStore.open(source, stack, opened.device, opened.dtype)
    names = checkpoint_names(model, store.reader.spans)
    if names is None:
        _unstreamable(source, "a checkpoint that transformers converts on load (renamed, fused, quantized or float32-kept tensors)")
    _check_budget(model, blocks, opened.dtype, budget, source.spec)
    with as_invalid(source):
        place(model, names, store.reader.read([name for name in names if not name.startswith(f"{blocks}.")]))
    buffers_to(model, opened.device)
    info = model_info(source, model, opened.config, opened.adapter, opened.dtype)
    loaded = LoadedModel(model, opened.tokenizer, opened.adapter, info, opened.device, time.perf_counter() - start, "parallel")
    return StreamedModel(loaded, model.get_submodule(blocks), store)


def _unstreamable(source: ResolvedSource, what: str) -> NoReturn:
    raise BadOptionError(OPTION, f"{source.spec}: streaming supports safetensors checkpoints of model types "
                                 f"{', '.join(STREAMABLE)}, not {what}; scan it without {OPTION}.")


def _check_budget(model: nn.Module, blocks_path: str, dtype: torch.dtype, budget: int, spec: str) -> None:
    """The weights a pass holds at once (everything outside the blocks, plus two blocks) must fit."""
    size = dtype.itemsize
    outer = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(f"{blocks_path}.")) * size
    block = max(sum(p.numel() for p in b.parameters()) for b in model.get_submodule(blocks_path)) * size
    needed = outer + 2 * block
    if needed > budget:
        raise BadOptionError(OPTION, f"{spec} needs at least {format_size(needed)} of weights on the device while "
                                     f"streaming (embeddings, head and two blocks), more than {format_size(budget)}.")

