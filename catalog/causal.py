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
Each row is paired with the baseline on exactly its own windows (its ratio, 95% interval and
baseline perplexity there). A candidate's verdict compares the interval of its own row with
`confirm_ratio`: *confirmed* above it (while control A's interval stays below `control_max`),
*rejected* below it, *inconclusive* across it (or above it with control A not clean).

Two speed-ups, both off the same single load. Prefix sharing (`share_prefix`, on by default,
`catalog.prefix`): a condition runs only the blocks from its first modified layer on, from the
baseline's recorded hidden states; the result is the plain evaluation's up to rounding. Early
stopping (`early_stop`, on by default; off is the paper's full evaluation): a condition is
checked after one window, then after batches that double (1, 1, 2, 4, ... windows, capped at
`batch_size`), and stops once the 95% interval of its paired ratio (over `parts` segments per
window, `catalog.perplexity`), widened to at least +-`stop_precision`, excludes its verdict
threshold: `confirm_ratio` for each candidate and for all candidates together, `control_max`
for control A. Rows without a threshold (control B, +SA, quantization) stop once the interval
is within +-`stop_precision`. A stopped row covers fewer tokens; every row carries its interval,
windows and the baseline's perplexity on those same tokens. Since most conditions settle on their first window, the first windows
of the conditions that zero scalars (+SA included) share batched passes (`_first_windows`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from catalog.architectures import DownProjection, Entries, Sites
from catalog.config import VerifyOptions
from catalog.hooks import zeroed, zeroed_per_sample
from catalog.patches import hooked
from catalog.perplexity import Evaluation, Interval, Settled, evaluate, frequent_tokens, paired_interval, segment_losses
from catalog.prefix import PrefixCache
from catalog.quantization import quantized
from catalog.result import CONFIRMED, INCONCLUSIVE, REJECTED, Ablation, Kind, SuperWeight

RESTORE_SA = "+SA: zero all, restore super activation"
FIRST_BATCH = 8  # conditions whose first windows share one forward pass (memory: logits of 8 windows)


@dataclass
class Condition:
    name: str
    # (order=None): its change, for a pass over the windows `order` names (None: all)
    context: Callable[..., contextlib.AbstractContextManager]
    detail: str = ""
    first_layer: int = 0  # the lowest block the condition changes: blocks below it are the baseline's
    thresholds: tuple[float, ...] = ()  # ratios its verdict compares against (early stopping)
    zeroes: Callable[[], Entries] | None = None  # the scalars it zeroes, where its change is that (and `per_sample`'s)
    per_sample: Callable[[int], contextlib.AbstractContextManager] | None = None  # its other change, to sample k of a shared batch
    kind: Kind = field(kw_only=True)  # what it is: verdicts are read from this, never from `name`
    target: SuperWeight | None = field(default=None, kw_only=True)  # the candidate a `Kind.WEIGHT` condition zeroes


def zeroing(name: str, entries: Callable[[], Entries], detail: str = "", first_layer: int = 0,
            thresholds: tuple[float, ...] = (), *, kind: Kind, target: SuperWeight | None = None) -> Condition:
    """A condition that zeroes `entries()`: in place (`context`), or per sample of a shared batch (`zeroes`)."""
    return Condition(name, lambda order=None: zeroed(entries()), detail, first_layer, thresholds, entries, kind=kind, target=target)


@dataclass
class Verification:
    ablations: list[Ablation]
    super_weights: list[SuperWeight]
    summary: dict = field(default_factory=dict)


def label(w: SuperWeight) -> str:
    expert = f" expert {w.expert}" if w.expert is not None else ""
    return f"zero L{w.layer}{expert} [{w.row}, {w.col}]"


def random_control(sites: Sites, weights: list[SuperWeight], seed: int) -> Entries:
    """One seeded random scalar per candidate, in the candidate's own matrix, never a candidate."""
    gen = torch.Generator().manual_seed(seed)
    taken = {(w.param, tuple(w.tensor_index)) for w in weights}
    entries = []
    for w in weights:
        tensor = sites.named(w.param).weight
        while True:
            index = tuple(int(torch.randint(n, (1,), generator=gen)) for n in tensor.shape)
            if (w.param, index) not in taken:
                taken.add((w.param, index))
                entries.append((tensor, index))
                break
    return entries


WeightOf = Callable[[DownProjection], torch.Tensor]  # a down projection's values (streaming reads them from the shards)


def own_weight(site: DownProjection) -> torch.Tensor:
    return site.weight


def outlier_control(sites: list[DownProjection], weights: list[SuperWeight], count: int,
                    weight_of: WeightOf = own_weight) -> Entries:
    """The `count` largest-magnitude down-projection weights that are not candidates.

    Selected on the weights' device in a few tensor operations and one transfer: a 7B model's
    control B has ~7000 entries, too many for one Python step (and one GPU synchronisation) each.
    Each projection's top-k is taken in turn, so `weight_of` may read one at a time.
    """
    skip = {(w.param, tuple(w.tensor_index)) for w in weights}
    k = count + len(weights)
    tops = _largest(sites, k, weight_of)
    values = torch.cat([top.values.float() for top in tops])  # (sites * k,)
    site_ids = torch.cat([torch.full_like(top.indices, s) for s, top in enumerate(tops)])
    flat = torch.cat([top.indices for top in tops])
    order = values.argsort(descending=True, stable=True)[:k]
    site_ids, flat = site_ids[order], flat[order]
    dims = max(site.weight.dim() for site in sites)
    shapes = torch.tensor([(1,) * (dims - site.weight.dim()) + tuple(site.weight.shape) for site in sites], device=flat.device)
    strides = shapes.flip(-1).cumprod(-1).flip(-1).roll(-1, -1)
    strides[:, -1] = 1
    indices = flat[:, None] // strides[site_ids] % shapes[site_ids]  # unravelled, every projection at once
    entries = []
    for row in torch.cat([site_ids[:, None], indices], dim=1).tolist():
        site = sites[row[0]]
        index = tuple(row[1 + dims - site.weight.dim():])
        if (site.param, index) not in skip and len(entries) < count:
            entries.append((site.weight, index))
    return entries


def _largest(sites: list[DownProjection], k: int, weight_of: WeightOf) -> list:
    """Per site, its largest magnitudes: enough of them to hold its part of the global top `k`.

    A top-k with k ~7000 of each of a 7B's 32 projections costs more than the conditions it sets
    up, so each site first gives a few more than an even share. The k-th largest of those is at
    most the global k-th; a site whose smallest kept value is below it has no more members, and
    the others (rare: outliers bunched in a few projections) are taken again with the full k.
    """
    tops = [_top_magnitudes(weight_of(site), 2 * -(-k // len(sites)) + 16) for site in sites]
    values = torch.cat([t.values for t in tops])
    if values.numel() >= k:
        kth = values.float().topk(k).values[-1]
        smallest = torch.stack([t.values[-1].float() for t in tops])
        partial = [len(t.values) < min(k, site.weight.numel()) for t, site in zip(tops, sites)]
        for i in (smallest >= kth).nonzero().flatten().tolist():
            if partial[i]:
                tops[i] = _top_magnitudes(weight_of(sites[i]), k)
    return tops


def _top_magnitudes(weight: torch.Tensor, n: int) -> TopK:
    """The `n` largest |weight| and their flat indices, from the `n` rows of largest maximum.

    Those rows hold the n largest values (ties included: each row's maximum is one of the values
    ranked), and a top-k over them reads n rows instead of the whole matrix.
    """
    magnitudes = weight.detach().abs()
    rows = magnitudes.reshape(-1, magnitudes.shape[-1])
    n = min(n, magnitudes.numel())
    if 2 * n >= len(rows):
        top = rows.flatten().topk(n)
        return TopK(top.values, top.indices)
    kept = rows.amax(dim=1).topk(n).indices
    top = rows[kept].flatten().topk(n)
    columns = rows.shape[1]
    return TopK(top.values, kept[top.indices // columns] * columns + top.indices % columns)


@dataclass
class TopK:
    values: torch.Tensor
    indices: torch.Tensor  # into the flattened weight


class ActivationRecorder:
    """Records a baseline pass's spike-channel outputs, then writes them back in a later pass (+SA).

    Windows are replayed in the same order (in batches of any size), so a hook's next call gets
    the next windows' recordings. Only positions where the baseline output reached `floor` (a
    tenth of the detected super activation) are written back: the super activation, not the
    whole channel.
    """

    def __init__(self, sites: Sites, weights: list[SuperWeight]) -> None:
        self.targets = [(sites.named(w.param).module, w.row, abs(w.output_activation) / 10) for w in weights]
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


def conditions(sites: Sites, weights: list[SuperWeight], options: VerifyOptions, recorder: ActivationRecorder,
               weight_of: WeightOf = own_weight) -> list[Condition]:
    everything = sites.scalars(weights)
    total = sum(site.weight.numel() for site in sites)
    outliers = outlier_control(sites, weights, max(len(weights), round(options.outlier_fraction * total)), weight_of)
    random = random_control(sites, weights, options.seed)
    first = min(w.layer for w in weights)  # zero all, control A (same matrices) and +SA start here
    confirm, control = (options.confirm_ratio,), (options.control_max,)
    found = [zeroing(label(w), lambda w=w: sites.scalars([w]), first_layer=w.layer, thresholds=confirm, kind=Kind.WEIGHT, target=w)
             for w in weights]
    found += [
        zeroing("zero all candidates", lambda: everything, f"{len(weights)} weights", first, confirm, kind=Kind.ALL_WEIGHTS),
        zeroing("control A: random", lambda: random, f"{len(weights)} seeded random weights in the same matrices (seed {options.seed})",
                first, control, kind=Kind.RANDOM_CONTROL),
        zeroing("control B: outliers", lambda: outliers, f"{len(outliers)} largest-magnitude non-candidate weights",
                _first_layer(sites, outliers), kind=Kind.OUTLIER_CONTROL),
        Condition(RESTORE_SA, lambda order=None: _stacked(zeroed(everything), recorder.restore(order)), first_layer=first,
                  zeroes=lambda: everything, per_sample=recorder.restore_sample, kind=Kind.RESTORE_SA),
    ]
    if options.quant_check:
        found += _quant_conditions(sites, everything, options)
    return found


def _first_layer(sites: Sites, entries: Entries) -> int:
    return min(sites.holding(tensor).layer for tensor, _ in entries)


def _quant_conditions(sites: list[DownProjection], keep: Entries, options: VerifyOptions) -> list[Condition]:
    block, clip = options.quant_block, options.clip_quantile
    rows = []
    for bits in (8, 4):
        base = f"int{bits} RTN block {block}"
        rows += [
            Condition(base, lambda order=None, bits=bits: quantized(sites, bits, block), kind=Kind.QUANTIZATION),
            Condition(f"{base} + keep SW", lambda order=None, bits=bits: quantized(sites, bits, block, keep=keep), kind=Kind.QUANTIZATION),
        ]
    clipped = f"clipped to the [{clip:g}, {1 - clip:g}] quantiles"
    rows += [
        Condition(f"int4 RTN block {block} + clip", lambda order=None: quantized(sites, 4, block, clip), clipped, kind=Kind.QUANTIZATION),
        Condition(f"int4 RTN block {block} + clip + keep SW", lambda order=None: quantized(sites, 4, block, clip, keep=keep), clipped,
                  kind=Kind.QUANTIZATION),
    ]
    return rows


@contextlib.contextmanager
def _stacked(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def verify(model: nn.Module, windows: torch.Tensor, sites: Sites, weights: list[SuperWeight],
           options: VerifyOptions, progress: Callable[[str], None] = lambda _m: None) -> Verification:
    stopwords = frequent_tokens(windows)
    recorder = ActivationRecorder(sites, weights)
    started = time.perf_counter()
    plan = conditions(sites, weights, options, recorder) if weights else []
    setup_seconds = time.perf_counter() - started
    prefix = PrefixCache.build(model, sites, {c.first_layer for c in plan}) if options.share_prefix else None
    progress(f"verifying: baseline (1/{len(plan) + 1})")
    started = time.perf_counter()
    with recorder.record(), prefix.record() if prefix else contextlib.nullcontext():
        base = evaluate(model, windows, stopwords, options.batch_size, parts=options.parts)
    baseline_seconds = time.perf_counter() - started
    started = time.perf_counter()
    first = _first_windows(model, windows, stopwords, plan, sites, prefix, options) if options.early_stop else {}
    first_seconds = time.perf_counter() - started
    evaluated = []
    for i, condition in enumerate(plan, start=2):
        progress(f"verifying: {condition.name} ({i}/{len(plan) + 1})")
        started = time.perf_counter()
        ev = _evaluate_condition(model, windows, stopwords, condition, base, prefix, options, first.get(condition.name))
        start = prefix.start(condition.first_layer) if prefix else 0
        evaluated.append(Evaluated(condition, ev, start, time.perf_counter() - started))
    evaluation = {"prefix_shared": prefix is not None and prefix.supported, "early_stop": options.early_stop,
                  "baseline_seconds": round(baseline_seconds, 4),  # what each extra condition is measured against
                  "setup_seconds": round(setup_seconds, 4),  # choosing the conditions' weights (control B's top-k)
                  "first_window_batch": len(first), "first_window_seconds": round(first_seconds, 4)}
    return conclude(base, evaluated, recorder, weights, options, evaluation)


@dataclass
class Evaluated:
    """A condition's evaluation, the block it started from, and its seconds (None: not timed alone)."""

    condition: Condition
    ev: Evaluation
    start_layer: int
    seconds: float | None = None


def conclude(base: Evaluation, evaluated: list[Evaluated], recorder: ActivationRecorder, weights: list[SuperWeight],
             options: VerifyOptions, evaluation: dict) -> Verification:
    """Rows, intervals, verdicts and summary of a verification, in memory or streamed."""
    rows, intervals = [_ablation_row(Kind.BASELINE, "baseline", base, base, paired_interval(base, base))], {}
    for e in evaluated:
        name = e.condition.name
        interval = _reported(paired_interval(e.ev, base), base.windows, options.stop_precision)
        detail = f"{recorder.restored_positions} positions restored" if e.condition.kind == Kind.RESTORE_SA else e.condition.detail
        rows.append(_ablation_row(e.condition.kind, name, e.ev, base, interval, detail))
        timed = {"seconds": round(e.seconds, 4)} if e.seconds is not None else {}
        intervals[name] = _interval_summary(interval, base.windows, e.start_layer) | timed
    summary = _summarize(rows) | {"evaluation": evaluation} | ({"intervals": intervals} if intervals else {})
    _apply_verdicts([e.condition for e in evaluated], rows[1:], options)
    return Verification(rows, weights, summary)


def _evaluate_condition(model: nn.Module, windows: torch.Tensor, stopwords: torch.Tensor, condition: Condition,
                        base: Evaluation, prefix: PrefixCache | None, options: VerifyOptions,
                        so_far: Evaluation | None = None) -> Evaluation:
    """One condition, from its first layer when the prefix is shared, checked as it goes when
    stopping early; from `so_far` (its first window, batched) when given, and only if that did not settle it."""
    settled = _settled(base, condition.thresholds, options.stop_precision) if options.early_stop else None
    if settled is not None and so_far is not None and settled(so_far):
        return so_far
    rest = list(range(so_far.windows, len(windows))) if so_far is not None else None  # the windows still to replay
    with condition.context(order=rest), prefix.skipping(condition.first_layer, rest) if prefix else contextlib.nullcontext():
        return evaluate(model, windows, stopwords, options.batch_size, settled, options.parts, so_far)


@torch.inference_mode()
def _first_windows(model: nn.Module, windows: torch.Tensor, stopwords: torch.Tensor, plan: list[Condition],
                   sites: Sites, prefix: PrefixCache | None, options: VerifyOptions) -> dict[str, Evaluation]:
    """The first window of every condition that zeroes scalars (+SA too), FIRST_BATCH per forward pass.

    Early stopping settles most conditions on their first window, where one condition is a
    batch of one: a 7B's matrix products run at half their batched speed there. Here the window is
    repeated once per condition, and each sample zeroes its own condition's scalars
    (`hooks.zeroed_per_sample`), from the lowest first layer of the batch.
    """
    zeroes = {c.name: c.zeroes() for c in plan if c.zeroes is not None}
    batchable = [c for c in plan if c.name in zeroes and not any(sites.holding(t).fused for t, _ in zeroes[c.name])]
    device = next(model.parameters()).device
    first: dict[str, Evaluation] = {}
    for group in (batchable[i: i + FIRST_BATCH] for i in range(0, len(batchable), FIRST_BATCH)):
        start = min(c.first_layer for c in group)
        batch = windows[:1].expand(len(group), -1).to(device)
        with contextlib.ExitStack() as stack:
            stack.enter_context(zeroed_per_sample(sites, [zeroes[c.name] for c in group]))  # its hooks run first
            for sample, condition in enumerate(group):
                if condition.per_sample is not None:
                    stack.enter_context(condition.per_sample(sample))
            if prefix is not None:
                stack.enter_context(prefix.skipping(start, order=[0] * len(group)))
            ev = segment_losses(model, batch, stopwords.to(device), options.parts)
        first |= {c.name: ev.window(i) for i, c in enumerate(group)}
    return first


def _settled(base: Evaluation, thresholds: tuple[float, ...], precision: float) -> Settled:
    """Stop once the (widened) 95% interval excludes every threshold; with none, once it is the precision band."""
    def settled(ev: Evaluation) -> bool:
        interval = _widened(paired_interval(ev, base), precision)
        if thresholds:
            return not any(interval.low <= t <= interval.high for t in thresholds)
        return interval.high <= interval.ratio * (1 + precision) * (1 + 1e-12)
    return settled


def _widened(interval: Interval, precision: float) -> Interval:
    """The t-interval, widened to at least the stopping precision (ratio / (1 + p), ratio * (1 + p)).

    Windows of one text are not independent draws, nor are the segments of one window, so a
    t-interval over a few of them can be too narrow: after two windows it may exclude the ratio
    that all windows give.
    """
    return replace(interval, low=min(interval.low, interval.ratio / (1 + precision)),
                   high=max(interval.high, interval.ratio * (1 + precision)))


def _reported(interval: Interval, total_windows: int, precision: float) -> Interval:
    """A row's interval: the plain t-interval when every window ran, else the widened one."""
    return interval if interval.windows == total_windows else _widened(interval, precision)


def _interval_summary(interval: Interval, total_windows: int, start_layer: int) -> dict:
    return {"ratio": interval.ratio, "ratio_low": interval.low, "ratio_high": interval.high, "windows": interval.windows,
            "stopped_early": interval.windows < total_windows, "start_layer": start_layer}


def _ablation_row(kind: Kind, name: str, ev: Evaluation, base: Evaluation, interval: Interval, detail: str = "") -> Ablation:
    """The row, paired with the baseline on its own windows: ratio = ppl / that baseline's ppl."""
    return Ablation(name, ev.ppl, ev.tokens, interval.ratio, detail, ev.stopword_mass, kind=kind,
                    baseline_ppl=base.first(ev.windows).ppl, ratio_low=interval.low, ratio_high=interval.high, windows=ev.windows)


def verdict(row: Ablation, confirm_ratio: float, control_clean: bool) -> str:
    """A tested candidate's verdict from its row's interval (the early stop's rule: the interval
    excludes the threshold or straddles it). A confirmation needs control A clean as well: when
    random weights of the same matrices also hurt, the effect is not the candidate's own."""
    if row.ratio_high < confirm_ratio:
        return REJECTED
    if row.ratio_low > confirm_ratio and control_clean:
        return CONFIRMED
    return INCONCLUSIVE


def _apply_verdicts(plan: list[Condition], rows: list[Ablation], options: VerifyOptions) -> None:
    """Each `Kind.WEIGHT` condition's candidate takes its row's ratio, interval and verdict."""
    control = next((row for row in rows if row.kind == Kind.RANDOM_CONTROL), None)
    clean = control is not None and control.ratio_high < options.control_max
    for condition, row in zip(plan, rows, strict=True):
        if condition.kind == Kind.WEIGHT and (w := condition.target) is not None:
            w.ppl_ratio, w.ppl_ratio_low, w.ppl_ratio_high = row.ratio, row.ratio_low, row.ratio_high
            w.verdict = verdict(row, options.confirm_ratio, clean)


def _summarize(rows: list[Ablation]) -> dict:
    by_kind = {row.kind: row for row in rows}
    if Kind.ALL_WEIGHTS not in by_kind:
        return {}
    base, zero = by_kind[Kind.BASELINE], by_kind[Kind.ALL_WEIGHTS]
    return {"stopword_mass_baseline": base.stopword_mass, "stopword_mass_zeroed": zero.stopword_mass,
            "stopword_shift": zero.stopword_mass / base.stopword_mass}
