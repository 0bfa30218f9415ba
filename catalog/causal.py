"""Causal checks of detected candidates (Yu et al. 2024, Table 1, Figs. 5-7), all from one load.

Conditions, each a perplexity on the same evaluation windows:
- baseline;
- each candidate zeroed alone (its `ppl_ratio`);
- all candidates zeroed;
- control A: as many seeded random weights, in the same matrices, zeroed;
- control B: the largest-magnitude non-candidate weights of the down projections zeroed;
- +SA: all candidates zeroed, but the original super activations written back where they arose;
- with `quant_check`, round-to-nearest int8/int4 of the down projections with and without
  holding the super weights out, and with outlier clipping (`catalog.quantization`).
A candidate is *confirmed* when zeroing it alone multiplies perplexity by at least
`confirm_ratio` while control A stays within `control_max` of the baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from catalog.architectures import DownProjection
from catalog.detection import weight_entries
from catalog.hooks import zeroed
from catalog.perplexity import Evaluation, evaluate, frequent_tokens
from catalog.quantization import quantized
from catalog.result import CANDIDATE, CONFIRMED, Ablation, SuperWeight

Entries = list[tuple[torch.Tensor, tuple[int, ...]]]
RESTORE_SA = "+SA: zero all, restore super activation"


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

    def to_config(self) -> dict:
        return asdict(self)


@dataclass
class Condition:
    name: str
    context: Callable[[], contextlib.AbstractContextManager]
    detail: str = ""


@dataclass
class Verification:
    ablations: list[Ablation]
    super_weights: list[SuperWeight]
    summary: dict = field(default_factory=dict)


def label(w: SuperWeight) -> str:
    expert = f" expert {w.expert}" if w.expert is not None else ""
    return f"zero L{w.layer}{expert} [{w.row}, {w.col}]"


def random_control(sites: list[DownProjection], weights: list[SuperWeight], seed: int) -> Entries:
    """One seeded random scalar per candidate, in the candidate's own matrix, never a candidate."""
    gen = torch.Generator().manual_seed(seed)
    taken = {(w.param, tuple(w.tensor_index)) for w in weights}
    by_param = {s.param: s.weight for s in sites}
    entries = []
    for w in weights:
        tensor = by_param[w.param]
        while True:
            index = tuple(int(torch.randint(n, (1,), generator=gen)) for n in tensor.shape)
            if (w.param, index) not in taken:
                taken.add((w.param, index))
                entries.append((tensor, index))
                break
    return entries


def outlier_control(sites: list[DownProjection], weights: list[SuperWeight], count: int) -> Entries:
    """The `count` largest-magnitude down-projection weights that are not candidates."""
    skip = {(w.param, tuple(w.tensor_index)) for w in weights}
    pool = []  # (|value|, site, flat index)
    for site in sites:
        flat = site.weight.detach().abs().flatten()
        top = flat.topk(min(count + len(weights), flat.numel()))
        pool += [(v, site, i) for v, i in zip(top.values.tolist(), top.indices.tolist())]
    pool.sort(key=lambda item: -item[0])
    entries = []
    for _, site, flat_index in pool:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), site.weight.shape))
        if (site.param, index) not in skip:
            entries.append((site.weight, index))
        if len(entries) == count:
            break
    return entries


class ActivationRecorder:
    """Records a baseline pass's spike-channel outputs, then writes them back in a later pass (+SA).

    Batches are replayed in the same order, so the i-th call of a hook gets the i-th recording.
    Only positions where the baseline output reached `floor` (a tenth of the detected super
    activation) are written back: the super activation, not the whole channel.
    """

    def __init__(self, sites: list[DownProjection], weights: list[SuperWeight]) -> None:
        by_param = {s.param: s for s in sites}
        self.targets = [(by_param[w.param].module, w.row, abs(w.output_activation) / 10) for w in weights]
        self.recorded: list[list[torch.Tensor]] = [[] for _ in self.targets]
        self.restored_positions = 0

    @contextlib.contextmanager
    def _hooks(self, fn) -> Iterator[None]:
        handles = [module.register_forward_hook(fn(i)) for i, (module, _, _) in enumerate(self.targets)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def record(self) -> contextlib.AbstractContextManager:
        def make(i):
            def hook(module, args, output):
                self.recorded[i].append(output[..., self.targets[i][1]].detach().clone())
            return hook
        return self._hooks(make)

    def restore(self) -> contextlib.AbstractContextManager:
        queues = [list(r) for r in self.recorded]

        def make(i):
            def hook(module, args, output):
                original = queues[i].pop(0)
                mask = original.abs() >= self.targets[i][2]
                self.restored_positions += int(mask.sum())
                output = output.clone()
                column = output[..., self.targets[i][1]]
                output[..., self.targets[i][1]] = torch.where(mask, original, column)
                return output
            return hook
        return self._hooks(make)


def conditions(sites: list[DownProjection], weights: list[SuperWeight], options: VerifyOptions, recorder: ActivationRecorder) -> list[Condition]:
    everything = weight_entries(sites, weights)
    total = sum(site.weight.numel() for site in sites)
    outliers = outlier_control(sites, weights, max(len(weights), round(options.outlier_fraction * total)))
    found = [Condition(label(w), lambda w=w: zeroed(weight_entries(sites, [w]))) for w in weights]
    found += [
        Condition("zero all candidates", lambda: zeroed(everything), f"{len(weights)} weights"),
        Condition("control A: random", lambda: zeroed(random_control(sites, weights, options.seed)), f"{len(weights)} seeded random weights in the same matrices (seed {options.seed})"),
        Condition("control B: outliers", lambda: zeroed(outliers), f"{len(outliers)} largest-magnitude non-candidate weights"),
        Condition(RESTORE_SA, lambda: _stacked(zeroed(everything), recorder.restore())),
    ]
    if options.quant_check:
        found += _quant_conditions(sites, everything, options)
    return found


def _quant_conditions(sites: list[DownProjection], keep: Entries, options: VerifyOptions) -> list[Condition]:
    block, clip = options.quant_block, options.clip_quantile
    rows = []
    for bits in (8, 4):
        base = f"int{bits} RTN block {block}"
        rows += [
            Condition(base, lambda bits=bits: quantized(sites, bits, block)),
            Condition(f"{base} + keep SW", lambda bits=bits: quantized(sites, bits, block, keep=keep)),
        ]
    rows += [
        Condition(f"int4 RTN block {block} + clip", lambda: quantized(sites, 4, block, clip), f"clipped to the [{clip:g}, {1 - clip:g}] quantiles"),
        Condition(f"int4 RTN block {block} + clip + keep SW", lambda: quantized(sites, 4, block, clip, keep=keep), f"clipped to the [{clip:g}, {1 - clip:g}] quantiles"),
    ]
    return rows


@contextlib.contextmanager
def _stacked(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def verify(model: nn.Module, windows: torch.Tensor, sites: list[DownProjection], weights: list[SuperWeight],
           options: VerifyOptions, progress: Callable[[str], None] = lambda _m: None) -> Verification:
    stopwords = frequent_tokens(windows)
    recorder = ActivationRecorder(sites, weights)
    plan = conditions(sites, weights, options, recorder) if weights else []
    progress(f"verifying: baseline (1/{len(plan) + 1})")
    with recorder.record():
        base = evaluate(model, windows, stopwords, options.batch_size)
    rows = [_ablation("baseline", base, base)]
    for i, condition in enumerate(plan, start=2):
        progress(f"verifying: {condition.name} ({i}/{len(plan) + 1})")
        with condition.context():
            rows.append(_ablation(condition.name, evaluate(model, windows, stopwords, options.batch_size), base, condition.detail))
        if condition.name == RESTORE_SA:
            rows[-1].detail = f"{recorder.restored_positions} positions restored"
    return Verification(rows, _verdicts(weights, rows, options), _summary(rows))


def _ablation(name: str, ev: Evaluation, base: Evaluation, detail: str = "") -> Ablation:
    return Ablation(name, ev.ppl, ev.tokens, ev.ppl / base.ppl, detail, ev.stopword_mass)


def _verdicts(weights: list[SuperWeight], rows: list[Ablation], options: VerifyOptions) -> list[SuperWeight]:
    by_name = {row.name: row for row in rows}
    control_ok = not weights or by_name["control A: random"].ratio <= options.control_max
    for w in weights:
        w.ppl_ratio = by_name[label(w)].ratio
        w.verdict = CONFIRMED if control_ok and w.ppl_ratio >= options.confirm_ratio else CANDIDATE
    return weights


def _summary(rows: list[Ablation]) -> dict:
    by_name = {row.name: row for row in rows}
    if "zero all candidates" not in by_name:
        return {}
    base, zero = by_name["baseline"], by_name["zero all candidates"]
    return {"stopword_mass_baseline": base.stopword_mass, "stopword_mass_zeroed": zero.stopword_mass,
            "stopword_shift": zero.stopword_mass / base.stopword_mass}
