"""The conditions of a verification (Yu et al. 2024, Table 1, Figs. 5-7): what each one changes.

- each candidate zeroed alone (`ZeroCandidate`, its verdict's row);
- all candidates zeroed (`ZeroAll`);
- control A: as many seeded random weights, in the same matrices, zeroed (`RandomControl`);
- control B: the largest-magnitude non-candidate weights of the down projections zeroed (`OutlierControl`);
- +SA: all candidates zeroed, but the original super activations written back where they arose (`RestoreSA`);
- with `quant_check`, round-to-nearest int8/int4 of the down projections with and without
  holding the super weights out, and with outlier clipping (`Quantized`, `catalog.quantization`).

Each kind is a small class that says what it changes in three settings: for a whole pass over
the windows (`in_pass`: the plain and the prefix-shared evaluation), for one sample of a batch
whose samples are different conditions (`in_sample`, where `batchable`: the conditions' first
windows, `catalog.causal`), and for one block of a streamed pass, where only that block has
weights (`in_block`, `catalog.streaming`). Verdicts and summaries read a condition's `kind`,
never its `name`, which is for people.

Adding a condition is a class here and one line in `plan` (docs/ARCHITECTURE.md shows one).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import torch

from catalog.architectures import Entries, Sites
from catalog.config import VerifyOptions
from catalog.controls import WeightOf, outlier_control, own_weight, random_control
from catalog.hooks import zeroed, zeroed_per_block
from catalog.patches import hooked
from catalog.quantization import quantized
from catalog.result import Kind, SuperWeight

RESTORE_SA = "+SA: zero all, restore super activation"


class Condition(ABC):
    """One row of the verification: a change to the model, and how to make it in each setting."""

    kind: ClassVar[Kind]  # what it is: verdicts and summaries read this, never `name`
    name: str
    thresholds: tuple[float, ...] = ()  # ratios its verdict compares against (early stopping)
    target: SuperWeight | None = None  # the candidate whose verdict its row gives (`Kind.WEIGHT`)
    batchable: bool = False  # whether `sample_scalars` and `in_sample` can put it in a shared batch

    @property
    def first_layer(self) -> int:
        """The lowest block it changes: blocks below it compute what the baseline's do."""
        return 0

    @property
    def detail(self) -> str:
        """What it did, in words, for its row (read after the passes ran)."""
        return ""

    @abstractmethod
    def in_pass(self, order: list[int] | None = None) -> AbstractContextManager:
        """Its change for a pass over the windows `order` names (None: all, in order)."""

    def sample_scalars(self) -> Entries:
        """The scalars it zeroes in its own sample of a shared batch (`hooks.zeroed_per_sample`)."""
        raise TypeError(f"{self.name}: not batchable")

    def in_sample(self, sample: int) -> AbstractContextManager:
        """What else it changes in sample `sample` of a shared batch of first windows."""
        return nullcontext()

    @abstractmethod
    def in_block(self, layer: int) -> AbstractContextManager:
        """Its change while block `layer` runs a streamed pass (the other blocks have no weights)."""


@dataclass(eq=False)
class Zeroing(Condition):
    """A set of scalars zeroed: in place for a pass, per sample of a batch, per block streamed."""

    name: str
    sites: Sites = field(repr=False)
    scalars: Entries = field(repr=False)
    note: str = ""  # its `detail`
    thresholds: tuple[float, ...] = ()

    @property
    def detail(self) -> str:
        return self.note

    @cached_property
    def first_layer(self) -> int:
        return min(self.sites.holding(tensor).layer for tensor, _ in self.scalars)

    @cached_property
    def batchable(self) -> bool:
        return not any(self.sites.holding(tensor).fused for tensor, _ in self.scalars)  # fused experts route tokens

    def in_pass(self, order: list[int] | None = None) -> AbstractContextManager:
        return zeroed(self.scalars)

    def sample_scalars(self) -> Entries:
        return self.scalars

    def in_block(self, layer: int) -> AbstractContextManager:
        return self._per_block(layer)

    @cached_property
    def _per_block(self) -> Callable[[int], AbstractContextManager]:
        return zeroed_per_block(self.sites, self.scalars)  # grouped once: control B zeroes ~7000, in every block


@dataclass(eq=False)
class ZeroCandidate(Zeroing):
    """One candidate zeroed alone: its row gives the candidate's ratio, interval and verdict."""

    kind: ClassVar[Kind] = Kind.WEIGHT
    target: SuperWeight | None = None

    @classmethod
    def of(cls, sites: Sites, weight: SuperWeight, options: VerifyOptions) -> ZeroCandidate:
        return cls(label(weight), sites, sites.scalars([weight]), thresholds=(options.confirm_ratio,), target=weight)


@dataclass(eq=False)
class ZeroAll(Zeroing):
    """Every candidate zeroed at once."""

    kind: ClassVar[Kind] = Kind.ALL_WEIGHTS

    @classmethod
    def of(cls, sites: Sites, weights: list[SuperWeight], options: VerifyOptions) -> ZeroAll:
        return cls("zero all candidates", sites, sites.scalars(weights), f"{len(weights)} weights", (options.confirm_ratio,))


@dataclass(eq=False)
class RandomControl(Zeroing):
    """Control A: as many seeded random scalars as candidates, each in its candidate's matrix."""

    kind: ClassVar[Kind] = Kind.RANDOM_CONTROL

    @classmethod
    def of(cls, sites: Sites, weights: list[SuperWeight], options: VerifyOptions) -> RandomControl:
        detail = f"{len(weights)} seeded random weights in the same matrices (seed {options.seed})"
        return cls("control A: random", sites, random_control(sites, weights, options.seed), detail, (options.control_max,))


@dataclass(eq=False)
class OutlierControl(Zeroing):
    """Control B: the largest-magnitude non-candidate down-projection weights, the paper's share of them."""

    kind: ClassVar[Kind] = Kind.OUTLIER_CONTROL

    @classmethod
    def of(cls, sites: Sites, weights: list[SuperWeight], options: VerifyOptions, weight_of: WeightOf = own_weight) -> OutlierControl:
        total = sum(site.weight.numel() for site in sites.distinct)
        outliers = outlier_control(sites.distinct, weights, max(len(weights), round(options.outlier_fraction * total)), weight_of)
        return cls("control B: outliers", sites, outliers, f"{len(outliers)} largest-magnitude non-candidate weights")


@dataclass(eq=False)
class RestoreSA(Zeroing):
    """+SA: every candidate zeroed, with the baseline's super activations written back where they arose."""

    kind: ClassVar[Kind] = Kind.RESTORE_SA
    recorder: ActivationRecorder | None = field(default=None, repr=False)

    @classmethod
    def of(cls, sites: Sites, weights: list[SuperWeight], recorder: ActivationRecorder) -> RestoreSA:
        return cls(RESTORE_SA, sites, sites.scalars(weights), recorder=recorder)

    @property
    def detail(self) -> str:
        return f"{self.recorder.restored_positions} positions restored"

    def in_pass(self, order: list[int] | None = None) -> AbstractContextManager:
        return _stacked(zeroed(self.scalars), self.recorder.restore(order))

    def in_sample(self, sample: int) -> AbstractContextManager:
        return self.recorder.restore_sample(sample)

    def in_block(self, layer: int) -> AbstractContextManager:
        return _stacked(self._per_block(layer), self.recorder.restore())


@dataclass(eq=False)
class Quantized(Condition):
    """Round-to-nearest quantization of every down projection (`catalog.quantization`), optionally
    clipped first, optionally holding the `keep` scalars (the candidates) in full precision."""

    kind: ClassVar[Kind] = Kind.QUANTIZATION
    name: str
    sites: Sites = field(repr=False)
    bits: int
    block: int
    clip: float | None = None
    keep: Entries = field(default_factory=list, repr=False)

    @property
    def detail(self) -> str:
        return f"clipped to the [{self.clip:g}, {1 - self.clip:g}] quantiles" if self.clip else ""

    @classmethod
    def rows(cls, sites: Sites, keep: Entries, options: VerifyOptions) -> list[Quantized]:
        """int8 and int4, each without and with the candidates kept; int4 clipped, without and with."""
        block, clip = options.quant_block, options.clip_quantile
        rows = []
        for bits in (8, 4):
            name = f"int{bits} RTN block {block}"
            rows += [cls(name, sites, bits, block), cls(f"{name} + keep SW", sites, bits, block, keep=keep)]
        name = f"int4 RTN block {block} + clip"
        return rows + [cls(name, sites, 4, block, clip), cls(f"{name} + keep SW", sites, 4, block, clip, keep)]

    def in_pass(self, order: list[int] | None = None) -> AbstractContextManager:
        return quantized(self.sites.distinct, self.bits, self.block, self.clip, keep=self.keep)

    def in_block(self, layer: int) -> AbstractContextManager:
        keep = self.sites.by_layer(self.keep).get(layer, [])
        return quantized(self.sites.in_layer(layer), self.bits, self.block, self.clip, keep=keep)


def plan(sites: Sites, weights: list[SuperWeight], options: VerifyOptions, recorder: ActivationRecorder,
         weight_of: WeightOf = own_weight) -> list[Condition]:
    """Every condition of a verification, in the order of its rows."""
    conditions: list[Condition] = [ZeroCandidate.of(sites, w, options) for w in weights]
    conditions += [
        ZeroAll.of(sites, weights, options),
        RandomControl.of(sites, weights, options),
        OutlierControl.of(sites, weights, options, weight_of),
        RestoreSA.of(sites, weights, recorder),
    ]
    if options.quant_check:
        conditions += Quantized.rows(sites, sites.scalars(weights), options)
    return conditions


def label(w: SuperWeight) -> str:
    expert = f" expert {w.expert}" if w.expert is not None else ""
    return f"zero L{w.layer}{expert} [{w.row}, {w.col}]"


@contextlib.contextmanager
def _stacked(*managers: AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


class ActivationRecorder:
    """Records a baseline pass's spike-channel outputs, then writes them back in a later pass (+SA).

    Windows are replayed in the same order (in batches of any size), so a hook's next call gets
    the next windows' recordings. Only positions where the baseline output reached `floor` (a
    tenth of the detected super activation) are written back: the super activation, not the
    whole channel.
    """

    def __init__(self, sites: Sites, weights: list[SuperWeight]) -> None:
        self.targets = [(sites.of(w).per_token, w.row, abs(w.output_activation) / 10) for w in weights]
        self.recorded: list[list[torch.Tensor]] = [[] for _ in self.targets]
        self.restored_positions = 0

    def _hooks(self, fn, targets: list[int] | None = None) -> contextlib.AbstractContextManager:
        indices = range(len(self.targets)) if targets is None else targets
        return hooked((self.targets[i][0], fn(i)) for i in indices)

    def record(self) -> contextlib.AbstractContextManager:
        def make(i):
            def hook(module, args, output):
                self.recorded[i].append(output[..., self.targets[i][1]].detach().clone())
            return hook
        return self._hooks(make)

    def restore(self, order: list[int] | None = None) -> contextlib.AbstractContextManager:
        """Write back at the targets recorded so far (a streamed baseline has recorded only the
        blocks up to the current one; in memory, all), for a pass over the windows `order` names
        (None: all, in order)."""
        ready = [i for i, kept in enumerate(self.recorded) if kept]
        recorded = {i: torch.cat(self.recorded[i]) for i in ready}  # (windows, seq) each
        if order is not None:
            recorded = {i: windows[order] for i, windows in recorded.items()}
        cursors = dict.fromkeys(ready, 0)

        def make(i):
            def hook(module, args, output):
                n = output.shape[0]
                cursors[i] += n
                return self._write_back(i, output.clone(), recorded[i][cursors[i] - n: cursors[i]])
            return hook
        return self._hooks(make, ready)

    def restore_sample(self, sample: int, window: int = 0) -> contextlib.AbstractContextManager:
        """`restore` for one sample of a batch only, with window `window`'s recordings (the shared
        batch of the conditions' first windows)."""
        def make(i):
            original = torch.cat(self.recorded[i])[window]

            def hook(module, args, output):
                output = output.clone()
                self._write_back(i, output[sample], original)
                return output
            return hook
        return self._hooks(make)

    def _write_back(self, i: int, output: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """Write target i's recorded outputs into `output` (in place) where they reached the floor."""
        _, row, floor = self.targets[i]
        mask = original.abs() >= floor
        self.restored_positions += int(mask.sum())
        output[..., row] = torch.where(mask, original, output[..., row])
        return output
