"""Shared layer prefix: evaluate a condition from its first modified layer on.

Zeroing a scalar of layer L's down projection changes nothing before block L, so the hidden
states entering block L are the baseline's. During the baseline pass the output of block L-1 is
recorded for every window; a condition whose changes start at block L then runs with blocks
0..L-1 short-circuited: blocks below L-1 pass their input through, block L-1 returns the recorded
output. Everything else (embeddings, masks, rotary embeddings, the blocks from L on, the final
norm, the head) is the model's own code, called as in a plain forward, so the result is the plain
evaluation's up to floating-point rounding.

This holds where a model calls its blocks once each, in order, each returning the hidden-state
tensor fed to the next (transformers' decoder models), batch first, (windows, positions, hidden),
or a tuple of it and what else (Falcon's Nones; BLOOM's attention weights, checked once to leave
the logits unchanged as Nones), which the short-circuited blocks return as Nones. Anything else
(blocks not in an `nn.ModuleList`: `PrefixCache.build` returns None; other shapes, XLNet's sequence
first, Gemma 3n's AltUp streams first; extras the model uses: `supported` turns False) is
evaluated plainly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from catalog.architectures import DownProjection
from catalog.patches import forwards_replaced, hooked
from catalog.probe import first_tensor


def blocks_of(model: nn.Module, sites: list[DownProjection]) -> nn.ModuleList | None:
    """The model's list of blocks, found from the sites' state-dict names ("<blocks>.<layer>.<path>")."""
    site = sites[0]
    marker = f".{site.layer}."
    if marker not in site.param:
        return None
    try:
        blocks = model.get_submodule(site.param[: site.param.index(marker)])
    except AttributeError:
        return None
    if not isinstance(blocks, nn.ModuleList) or not any(m is site.module for m in blocks[site.layer].modules()):
        return None
    return blocks


EXTRAS_CHECK_TOKENS = 64  # of the first window, for the check that blocks' extra outputs go unused


class PrefixCache:
    """Records the outputs of the blocks just before each condition's first layer; replays them."""

    def __init__(self, blocks: nn.ModuleList, first_layers: set[int], model: nn.Module | None = None) -> None:
        self.blocks, self.model = blocks, model
        self.layers = sorted(layer for layer in first_layers if 0 < layer < len(blocks))
        self.outputs: dict[int, torch.Tensor] = {}  # first layer -> block L-1's output, (windows, seq, hidden)
        self.nones: dict[int, int | None] = {}  # block -> how many Nones follow its hidden states (None: it returns them alone)
        self.supported = True

    @classmethod
    def build(cls, model: nn.Module, sites: list[DownProjection], first_layers: set[int]) -> PrefixCache | None:
        blocks = blocks_of(model, sites) if sites else None
        return cls(blocks, first_layers, model) if blocks is not None else None

    @classmethod
    def replaying(cls, blocks: nn.ModuleList, outputs: dict[int, torch.Tensor], nones: int | None = None) -> PrefixCache:
        """A cache of outputs computed elsewhere (a streamed scan's, block by block): `skipping(L)`
        then replays `outputs[L]` as block L-1's output, L = len(blocks) included, each block
        returning its hidden states followed by `nones` Nones (None: alone)."""
        cache = cls(blocks, set(outputs))
        cache.outputs = outputs
        cache.nones = dict.fromkeys(range(len(blocks)), nones)
        return cache

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Keep block L-1's output, for every window, for every shared first layer L; and what
        every block returns besides its hidden states."""
        batches: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        ids: list[torch.Tensor] = []  # each forward's input ids
        extras = False  # a block returned more than its hidden states

        def make(block: int):
            def hook(module, args, output):
                nonlocal extras
                hidden, rest = _parts(output)
                if hidden is None or hidden.dim() != 3 or hidden.shape[0] != len(ids[-1]):  # XLNet: sequence first; Gemma 3n: streams
                    self.supported = False
                    return
                self.nones[block] = None if rest is None else len(rest)
                extras = extras or any(x is not None for x in rest or ())
                if block + 1 in batches:
                    batches[block + 1].append(hidden.detach())
            return hook

        def forward(module, args, kwargs):
            ids.append(kwargs["input_ids"] if "input_ids" in kwargs else args[0])
        with hooked([(self.model, forward)], pre=True, with_kwargs=True), hooked((block, make(i)) for i, block in enumerate(self.blocks)):
            yield
        self.outputs = {layer: torch.cat(kept) for layer, kept in batches.items() if kept}
        if extras and self.supported:
            self.supported = _extras_unused(self.model, self.blocks, ids[0][:1, :EXTRAS_CHECK_TOKENS])

    def start(self, first_layer: int) -> int:
        """The block evaluation will actually start at for a condition first modifying `first_layer`."""
        return first_layer if self.supported and first_layer in self.outputs else 0

    @contextlib.contextmanager
    def skipping(self, first_layer: int, order: list[int] | None = None) -> Iterator[None]:
        """Short-circuit blocks < first_layer with the recorded outputs: of the windows in order,
        or of the windows `order` names, one per sample (a batch of one window repeated)."""
        start = self.start(first_layer)
        if start == 0:
            yield
            return
        recorded, cursor = self.outputs[start], 0
        if order is not None:
            recorded = recorded[torch.tensor(order, device=recorded.device)]

        def passthrough(block: int):
            return lambda hidden_states, *args, **kwargs: self._returned(block, hidden_states)

        def replay(hidden_states, *args, **kwargs):
            nonlocal cursor
            n = hidden_states.shape[0]
            cursor += n
            return self._returned(start - 1, recorded[cursor - n: cursor])

        with forwards_replaced((self.blocks[i], replay if i == start - 1 else passthrough(i)) for i in range(start)):
            yield

    def _returned(self, block: int, hidden: torch.Tensor):
        """What block `block` returns, with `hidden` as its hidden states."""
        nones = self.nones.get(block)
        return hidden if nones is None else (hidden, *[None] * nones)


def _parts(output) -> tuple[torch.Tensor | None, tuple | None]:
    """A block's output as (its hidden states, what follows them in a tuple, None for a tensor);
    (None, None) for anything else."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], output[1:]
    return None, None


def _extras_unused(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor) -> bool:
    """Whether the model's logits are the same, bit for bit, with what its blocks return besides
    their hidden states replaced by Nones (BLOOM's and GPT-Neo's attention weights, which the
    model keeps only when asked to): then the short-circuited blocks may return Nones there."""
    def stripped(module, args, output):
        return (output[0], *[None] * (len(output) - 1)) if isinstance(output, tuple) else output
    try:
        with torch.inference_mode():
            plain = first_tensor(model(input_ids=ids, use_cache=False))
            with hooked((block, stripped) for block in blocks):
                without = first_tensor(model(input_ids=ids, use_cache=False))
    except Exception:  # the model needs them (a state it passes on)
        return False
    return without is not None and torch.equal(plain, without)
