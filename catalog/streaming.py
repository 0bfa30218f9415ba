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
change to one block (`Condition.in_block`, `catalog.conditions`) is entered around that block's
call only: its scalars of that block zeroed, that block's matrices quantized. The head and loss
are the model's own: the final hidden states are replayed into its forward with
`PrefixCache.replaying`. Detection makes one pass per iteration (a short prompt).

Supported: safetensors checkpoints of any architecture whose blocks can be called one at a time:
each block's call is recorded from one forward of the model's own code in which every block passes
its input through (`block_calls`, returned alone or first in a tuple, as the model takes it apart),
so blocks of different kinds (sliding and full attention, state-space and attention layers) each
get their own arguments. Blocks that pass state on besides their hidden states (`HandsOnState`)
are refused. The down projections are found as in memory (`catalog.architectures`), on the first
block of each structure, read for the purpose. Anything else is refused with one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, MutableMapping, MutableSequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import nn

from catalog import probe as probing
from catalog.architectures import DownProjection, Probed, Sites, architecture, block_sites, decoder_lists, structure
from catalog.causal import Evaluated, Verification, conclude
from catalog.conditions import ActivationRecorder, plan
from catalog.config import SpikeRule, VerifyOptions
from catalog.detection import Detection, candidate, iterate
from catalog.errors import BadOptionError, first_line, memory_shortage
from catalog.hooks import Capture, capture, zeroed_per_block
from catalog.loading import LoadedModel, as_invalid, assign, buffers_to, checkpoint_names, model_info, open_source, place, skeleton
from catalog.options import MAX_GPU_MEMORY, format_size
from catalog.patches import forwards_replaced, hooked
from catalog.perplexity import Evaluation, evaluate, frequent_tokens
from catalog.prefix import PrefixCache
from catalog.reader import ShardReader
from catalog.result import SuperWeight
from catalog.sources import ResolvedSource

BlockCall = tuple[tuple, dict]  # a block's arguments after the hidden states, by position and by name
Inputs = tuple[torch.Tensor, list[BlockCall]]  # the first block's hidden-state input, and every block's call
BlockContext = Callable[[int], contextlib.AbstractContextManager]  # what a stream changes while block `layer` runs


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
        return cls(stack.enter_context(ShardReader.open(source.weight_files(), device, dtype=dtype)))

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
def materialized(module: nn.Module, tensors: dict[str, torch.Tensor], store: ShardStore) -> Iterator[None]:
    """The module's parameters hold `tensors` inside the block; back on the meta device after."""
    try:
        for name, tensor in tensors.items():
            assign(module, name, tensor)
        yield
    finally:
        for name, tensor in tensors.items():
            assign(module, name, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"))
        store.release(tensors)


# What a block may return, as the model's forward takes it apart: its hidden states alone (None),
# or first in a tuple that this many other values follow (Falcon, MPT, GPT-Neo: `outputs[0]`;
# XLNet: `hidden, mems = block(...)`).
RETURNS = (None, 0, 1, 2)


def block_calls(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, returns: int | None) -> Inputs:
    """The hidden states entering the first block for `ids`, and the other arguments of every
    block's call, from the model's own forward (embeddings, masks, rotary embeddings) with each
    block passing its input through, returned as `returns` says. Every block must be handed
    hidden states of the first one's shape (a model that takes a tuple apart, handed a tensor,
    may slice it instead of failing), and none of what a block returns after them: the values it
    returns there are empty tensors of their own, which no later block's call may hold
    (`HandsOnState`: Zaya hands its router states on)."""
    first: list[torch.Tensor] = []
    calls: list[BlockCall] = []
    returned: list[torch.Tensor] = []  # kept alive: a freed one's id could be a later argument's

    def record(module, args, kwargs):
        first.append(args[0] if args else kwargs["hidden_states"])
        calls.append((tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"}))

    def passthrough(hidden_states, *args, **kwargs):
        if returns is None:
            return hidden_states
        extras = [torch.empty(0) for _ in range(returns)]
        returned.extend(extras)
        return hidden_states, *extras

    with (hooked(((block, record) for block in blocks), pre=True, with_kwargs=True),
          forwards_replaced((block, passthrough) for block in blocks)):
        model(input_ids=ids, use_cache=False)
    if len(calls) != len(blocks):
        raise ValueError(f"the model called its {len(blocks)} blocks {len(calls)} times")
    handed = next((i for i, h in enumerate(first) if not isinstance(h, torch.Tensor) or h.shape != first[0].shape), None)
    if handed is not None:
        raise ValueError(f"block {handed} was handed {_shape(first[handed])} where block 0 was handed {_shape(first[0])}")
    ids = set(map(id, returned))
    passed = next((i for i, (args, kwargs) in enumerate(calls) if ids & set(map(id, (*args, *kwargs.values())))), None)
    if passed is not None:
        raise HandsOnState(f"block {passed} is handed what block {passed - 1} returns besides its hidden states")
    return first[0], calls


def _shape(value: object) -> str:
    return f"hidden states of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


@dataclass
class Stream:
    """Hidden states of one evaluation (baseline, a condition, a detection prompt), batch by
    batch, each batch's calls of the blocks, and the change it makes to whichever block it runs through."""

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]
    context: BlockContext

    @classmethod
    def of(cls, inputs: list[Inputs], context: BlockContext) -> Stream:
        return cls([hidden for hidden, _ in inputs], [calls for _, calls in inputs], context)

    def fork(self, context: BlockContext) -> Stream:
        return Stream(list(self.hidden), self.calls, context)

    def through(self, layer: int, block: nn.Module) -> None:
        with self.context(layer):
            self.hidden = [probing.first_tensor(block(h, *calls[layer][0], **calls[layer][1]))
                           for h, calls in zip(self.hidden, self.calls)]


@dataclass(frozen=True)
class Budget:
    """What `--max-gpu-memory` must hold: the resident weights and, in verification, every stream's
    hidden states and the head's logits, which set how many windows the head takes at once."""

    limit: int
    outer: int  # bytes of the weights outside the blocks (embeddings, head, final norm)
    block: int  # bytes of the largest block
    spec: str

    def verification(self, streams: int, windows: torch.Tensor, batch: int, text, vocab: int, itemsize: int) -> int:
        """The windows the head evaluates at once under the limit (at least one), or refused up front
        with the smallest limit that would do. The pass holds two blocks, every stream's hidden
        states and one block call's activations on `batch` windows (the MLP's three intermediate
        tensors, float attention scores); the head, one batch of logits and three windows' worth of float
        log-probabilities (`perplexity.segment_losses` makes a window's while the last one's is held)."""
        count, seq = windows.shape
        hidden, heads = text.hidden_size, text.num_attention_heads
        states = streams * count * seq * hidden * itemsize
        call = batch * seq * (3 * _intermediate(text) + 4 * hidden) * itemsize + batch * heads * seq * seq * 4
        window_logits, log_probs = seq * vocab * itemsize, 3 * seq * vocab * 4
        needed = self.outer + states + max(2 * self.block + call, window_logits + log_probs)
        if needed > self.limit:
            raise BadOptionError(MAX_GPU_MEMORY, f"{self.spec}: verifying {streams} conditions over {count} windows of {seq} "
                                                 f"tokens streamed needs at least {format_size(needed)} on the device, more than "
                                                 f"{format_size(self.limit)}; use {MAX_GPU_MEMORY} {-(-needed // 2**20)}MiB or fewer "
                                                 "--eval-tokens.")
        return max(1, (self.limit - self.outer - states - log_probs) // window_logits)


def _intermediate(text) -> int:  # type: ignore[no-untyped-def]
    """The feed-forward width an activation estimate uses (the largest a config names, else 4x hidden)."""
    widths = [getattr(text, n, None) for n in ("intermediate_size", "ffn_dim", "n_inner", "moe_intermediate_size")]
    return max([w for w in widths if isinstance(w, int)] or [4 * text.hidden_size])


@dataclass
class StreamedModel:
    """A model whose blocks live in the checkpoint until a pass reads them, one at a time."""

    loaded: LoadedModel
    path: str  # of the list of blocks
    blocks: nn.ModuleList
    store: ShardStore
    budget: Budget
    returns: int | None  # what a block returns besides its hidden states (`RETURNS`)

    def layers(self) -> Iterator[tuple[int, nn.Module]]:
        """Each block in turn with its weights on the device; the next one is read meanwhile."""
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.store.read_block, block_prefix(self.path, 0))
            for i, block in enumerate(self.blocks):
                tensors = pending.result()
                if i + 1 < len(self.blocks):
                    pending = pool.submit(self.store.read_block, block_prefix(self.path, i + 1))
                with materialized(block, tensors, self.store):
                    yield i, block

    def inputs(self, ids: list[torch.Tensor]) -> list[Inputs]:
        return [block_calls(self.loaded.model, self.blocks, batch.to(self.loaded.device), self.returns) for batch in ids]

    @torch.inference_mode()
    def detect(self, prompts: list[torch.Tensor], sites: Sites, rule: SpikeRule, max_iterations: int) -> Detection:
        """`catalog.detection.detect`, one streamed pass per iteration."""
        calls = self.inputs(prompts)
        return iterate(lambda found, iteration: self._detection_pass(calls, sites, found, iteration), sites, rule, max_iterations)

    def _detection_pass(self, calls: list[Inputs], sites: Sites, found: list[SuperWeight],
                        iteration: int) -> tuple[dict[int, Capture], Callable[[int], SuperWeight]]:
        """Per site the largest-spike capture over the prompts (`detection.run_prompts`), with
        `found` zeroed, and the candidate it names (read while its block is resident: every site's)."""
        zero_found = zeroed_per_block(sites, sites.scalars(found))
        streams = [Stream.of([call], zero_found) for call in calls]
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
    def verify(self, windows: torch.Tensor, sites: Sites, weights: list[SuperWeight],
               options: VerifyOptions, progress: Callable[[str], None] = lambda _m: None) -> Verification:
        """`catalog.causal.verify` (with its prefix sharing) in one streamed pass over the blocks; the
        pass carries every window, so `options.early_stop` is not used (`ScanOptions.verification`)."""
        stopwords = frequent_tokens(windows)
        recorder = ActivationRecorder(sites, weights)
        conditions = plan(sites, weights, options, recorder, weight_of=self._read_weight) if weights else []
        text = self.loaded.model.config.get_text_config()
        head_batch = self.budget.verification(len(conditions) + 1, windows, options.batch_size, text, self.loaded.vocabulary,
                                              next(self.loaded.model.parameters()).dtype.itemsize)
        base = Stream.of(self.inputs(windows.split(options.batch_size)), context=lambda layer: recorder.record())
        streams: dict[str, Stream] = {}
        for layer, block in self.layers():
            progress(f"verifying, streamed: block {layer + 1}/{len(self.blocks)}, {len(conditions) + 1} conditions")
            streams |= {c.name: base.fork(c.in_block) for c in conditions if c.first_layer == layer}
            base.through(layer, block)
            for stream in streams.values():
                stream.through(layer, block)
        started = time.perf_counter()
        baseline = self._evaluation(windows, stopwords, base, min(options.batch_size, head_batch))
        head_seconds = time.perf_counter() - started
        evaluated = [Evaluated(c, self._evaluation(windows, stopwords, streams[c.name], min(options.batch_size, head_batch)),
                               c.first_layer) for c in conditions]
        evaluation = {"prefix_shared": True, "early_stop": False, "streamed": True, "head_batch": min(options.batch_size, head_batch),
                      "head_seconds": round(head_seconds, 4)}  # the head and loss of one condition, after the pass
        return conclude(baseline, evaluated, weights, options, evaluation)

    def _read_weight(self, site: DownProjection) -> torch.Tensor:
        """A down projection's values on the device, for control B's top-k (one at a time, freed after)."""
        return self.store.reader.read([site.param])[site.param]

    def _evaluation(self, windows: torch.Tensor, stopwords: torch.Tensor, stream: Stream, batch_size: int) -> Evaluation:
        """Perplexity from a stream's final hidden states, through the model's own norm and head."""
        final = PrefixCache.replaying(self.blocks, {len(self.blocks): torch.cat(stream.hidden)}, self.returns)
        with final.skipping(len(self.blocks)):
            return evaluate(self.loaded.model, windows, stopwords, batch_size)


def block_prefix(path: str, layer: int) -> str:
    """The state-dict prefix of block `layer` of the block list at `path`."""
    return f"{path}.{layer}."


def probe_blocks(store: ShardStore, path: str, blocks: nn.ModuleList, inputs: Inputs, hidden: int) -> list[Probed]:
    """Each block as probed on the first block of its structure, read for the purpose. A block
    that writes into what the blocks after it are handed is refused (`HandsOnState`)."""
    first, calls = inputs
    kinds: dict[tuple, Probed] = {}
    for layer, block in enumerate(blocks):
        kind = structure(block)
        if kind not in kinds:
            with materialized(block, store.read_block(block_prefix(path, layer)), store), torch.no_grad():
                sizes = _filled(calls[layer])
                with probing.recording(list(block.modules())) as probe:
                    block(first, *calls[layer][0], **calls[layer][1])
                _check_writes_nothing(layer, calls[layer], sizes)
                kinds[kind] = Probed(block, probe, block_sites(block, hidden, probe))
    return [kinds[structure(block)] for block in blocks]


class HandsOnState(ValueError):
    """A block passes the blocks after it something besides its hidden states, which a streamed
    pass (each block called on the recorded arguments of a forward in which none ran) cannot give them."""


def _filled(call: BlockCall) -> dict[str, int]:
    """The sizes of the containers among a call's arguments (a dict the blocks share), by name."""
    args, kwargs = call
    named = {**{f"argument {i + 1}": v for i, v in enumerate(args)}, **kwargs}
    return {name: len(v) for name, v in named.items() if isinstance(v, (MutableMapping, MutableSequence))}


def _check_writes_nothing(layer: int, call: BlockCall, sizes: dict[str, int]) -> None:
    """Raise `HandsOnState` if the block wrote into a container among its arguments, which the
    blocks after it are handed too (Gemma 3n's key-value sharing)."""
    changed = next((name for name, size in _filled(call).items() if sizes.get(name) != size), None)
    if changed:
        raise HandsOnState(f"block {layer} writes into its {changed} argument, which the blocks after it read")


def open_streamed(source: ResolvedSource, stack: contextlib.ExitStack, *, budget: int, device: str = "auto",
                  dtype: str = "auto", trust_remote_code: bool = False) -> StreamedModel:
    """The model skeleton with its non-block weights on the device; blocks stay in the shards."""
    start = time.perf_counter()
    if source.format != "safetensors" or source.gguf_file:
        _unstreamable(source, f"a {source.format} file")
    opened = open_source(source, device, dtype, trust_remote_code)
    text, model_type = opened.config.get_text_config(), opened.config.model_type
    missing = [name for name in ("hidden_size", "num_attention_heads") if not getattr(text, name, None)]
    if missing:  # the budget needs them (BLT leaves them to its parts' configs; RWKV has no attention heads)
        _unstreamable(source, f"a model whose config names no {' or '.join(missing)}")
    with as_invalid(source):
        model = skeleton(opened.config, opened.dtype, trust_remote_code)
        store = ShardStore.open(source, stack, opened.device, opened.dtype)
    names = checkpoint_names(model, store.reader.spans)
    if names is None:
        _unstreamable(source, "a checkpoint that transformers converts on load (renamed, fused, quantized or float32-kept tensors)")
    lists = decoder_lists(model, opened.config, source.spec)
    in_blocks = _under([path for path, _ in lists])
    held = _check_budget(model, lists, in_blocks, opened.dtype, budget, source.spec)
    with as_invalid(source):
        place(model, names, store.reader.read([name for name in names if not in_blocks(name)]))
    buffers_to(model, opened.device)
    path, blocks, inputs, returns = _streamable(source, model, lists, probing.probe_ids(text.vocab_size, opened.device), model_type)
    try:
        probed = probe_blocks(store, path, blocks, inputs, text.hidden_size)
    except HandsOnState as exc:
        _unstreamable(source, f"model type {model_type!r}, whose blocks pass on more than their hidden states ({exc})")
    found = architecture(model, path, blocks, probed, source.spec, model_type)
    if found.sites.shared:  # a block's reads would change a weight that an earlier block holds
        _unstreamable(source, f"blocks that share a down projection's weight ({next(iter(found.sites.shared))})")
    info = model_info(source, model, opened.config, opened.dtype, found)
    loaded = LoadedModel(model, opened.tokenizer, found, info, opened.device, time.perf_counter() - start, "parallel")
    return StreamedModel(loaded, path, blocks, store, held, returns)


def _under(paths: list[str]) -> Callable[[str], bool]:
    return lambda name: any(name.startswith(f"{path}.") for path in paths)


def _streamable(source: ResolvedSource, model: nn.Module, lists: list[tuple[str, nn.ModuleList]], ids: torch.Tensor,
                model_type: str) -> tuple[str, nn.ModuleList, Inputs, int | None]:
    """The list of blocks that a text-only forward of `ids` calls one at a time, each once, in
    order (the largest if several do), with those calls and what its blocks return (`RETURNS`)."""
    problem = None
    for path, blocks in sorted(lists, key=lambda item: -sum(p.numel() for p in item[1].parameters())):
        for returns in RETURNS:
            try:
                return path, blocks, block_calls(model, blocks, ids, returns), returns
            except HandsOnState as exc:
                _unstreamable(source, f"model type {model_type!r}, whose blocks pass on more than their hidden states ({exc})")
            except Exception as exc:  # the model's own code, fed blocks that pass their input through
                if memory_shortage(exc):
                    raise
                problem = problem or first_line(exc)
    _unstreamable(source, f"model type {model_type!r}, whose blocks cannot be called one at a time ({problem[:160]})")


def _unstreamable(source: ResolvedSource, what: str) -> NoReturn:
    raise BadOptionError(MAX_GPU_MEMORY, f"{source.spec}: streaming needs a safetensors checkpoint whose blocks can be called "
                                 f"one at a time, not {what}; scan it without {MAX_GPU_MEMORY}.")


def _check_budget(model: nn.Module, lists: list[tuple[str, nn.ModuleList]], in_blocks: Callable[[str], bool],
                  dtype: torch.dtype, budget: int, spec: str) -> Budget:
    """The weights a pass holds at once (everything outside the blocks, plus two blocks) must fit;
    the rest of the budget is for activations (`Budget.verification`)."""
    outer = sum(p.numel() for n, p in model.named_parameters() if not in_blocks(n)) * dtype.itemsize
    block = max(sum(p.numel() for p in b.parameters()) for _, blocks in lists for b in blocks) * dtype.itemsize
    needed = outer + 2 * block
    if needed > budget:
        raise BadOptionError(MAX_GPU_MEMORY, f"{spec} needs at least {format_size(needed)} of weights on the device while "
                                     f"streaming (embeddings, head and two blocks), more than {format_size(budget)}.")
    return Budget(budget, outer, block, spec)
