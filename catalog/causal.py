"""Causal checks of detected candidates (Yu et al. 2024, Table 1, Figs. 5-7), all from one load.

Every condition of `catalog.conditions.plan` is a perplexity on the same evaluation windows as
the baseline. Each row is paired with the baseline on exactly its own windows (its ratio, 95%
interval and baseline perplexity there). A candidate's verdict compares the interval of its own
row with `confirm_ratio`: *confirmed* above it (while control A's interval stays below
`control_max`), *rejected* below it, *inconclusive* across it (or above it with control A not clean).

Two speed-ups, both off the same single load. Prefix sharing (`share_prefix`, on by default,
`catalog.prefix`): a condition runs only the blocks from its first modified layer on, from the
baseline's recorded hidden states; the result is the plain evaluation's up to rounding. Early
stopping (`early_stop`, on by default; off is the paper's full evaluation): a condition is
checked after one window, then after batches that double (1, 1, 2, 4, ... windows, capped at
`batch_size`), and stops once the 95% interval of its paired ratio (over `parts` segments per
window, `catalog.perplexity`), widened to at least +-`stop_precision`, excludes its verdict
threshold (`Condition.thresholds`). Rows without a threshold (control B, +SA, quantization) stop
once the interval is within +-`stop_precision`. A stopped row covers fewer tokens; every row
carries its interval, windows and the baseline's perplexity on those same tokens. Since most
conditions settle on their first window, the first windows of the batchable conditions share
batched passes, one per start layer (`VerificationRun.first_windows`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from catalog.architectures import Sites
from catalog.conditions import ActivationRecorder, Condition, plan
from catalog.config import VerifyOptions
from catalog.hooks import zeroed_per_sample
from catalog.perplexity import Evaluation, Interval, Settled, evaluate, frequent_tokens, paired_interval, segment_losses
from catalog.prefix import PrefixCache
from catalog.result import CONFIRMED, INCONCLUSIVE, REJECTED, Ablation, Kind, SuperWeight

FIRST_BATCH = 8  # conditions whose first windows share one forward pass (memory: logits of 8 windows)


@dataclass
class Verification:
    ablations: list[Ablation]
    super_weights: list[SuperWeight]
    summary: dict = field(default_factory=dict)


@dataclass
class Evaluated:
    """A condition's evaluation, the block it started from, and its seconds (None: not timed alone)."""

    condition: Condition
    ev: Evaluation
    start_layer: int
    seconds: float | None = None


@dataclass
class VerificationRun:
    """What every condition of one verification is evaluated with: the model, the windows and their
    stop words, the prefix cache (None: each condition runs from the first block) and the options."""

    model: nn.Module
    windows: torch.Tensor  # (windows, seq)
    stopwords: torch.Tensor
    options: VerifyOptions
    prefix: PrefixCache | None = None

    def baseline(self) -> Evaluation:
        """The unmodified model on every window, recording the prefix cache's hidden states."""
        with self.prefix.record() if self.prefix else contextlib.nullcontext():
            return evaluate(self.model, self.windows, self.stopwords, self.options.batch_size, parts=self.options.parts)

    def start_layer(self, condition: Condition) -> int:
        """The block its evaluation starts at: its first layer where the prefix is shared, else 0."""
        return self.prefix.start(condition.first_layer) if self.prefix else 0

    def condition(self, condition: Condition, base: Evaluation, so_far: Evaluation | None = None) -> Evaluation:
        """One condition, from its first layer when the prefix is shared, checked as it goes when
        stopping early; from `so_far` (its first window, batched) when given, and only if that did not settle it."""
        settled = stopping_rule(base, condition.thresholds, self.options.stop_precision) if self.options.early_stop else None
        if settled is not None and so_far is not None and settled(so_far):
            return so_far
        rest = list(range(so_far.windows, len(self.windows))) if so_far is not None else None  # the windows still to replay
        with condition.in_pass(order=rest), self._skipping(condition.first_layer, rest):
            return evaluate(self.model, self.windows, self.stopwords, self.options.batch_size, settled, self.options.parts, so_far)

    @torch.inference_mode()
    def first_windows(self, conditions: list[Condition], sites: Sites) -> dict[str, Evaluation]:
        """The first window of every batchable condition, up to FIRST_BATCH per forward pass.

        Early stopping settles most conditions on their first window, where one condition is a
        batch of one: a large model's matrix products run well below their batched speed there.
        Here the window is repeated once per condition, and each sample gets its own condition's
        change (`Condition.sample_scalars`, `Condition.in_sample`). The samples of one pass share
        their start layer: a pass starts at its lowest, so a late candidate batched with an early
        control would run every block the control needs (SmolLM2: 212 sample-blocks where 114 do).
        """
        by_start: dict[int, list[Condition]] = {}
        for c in conditions:
            if c.batchable:
                by_start.setdefault(self.start_layer(c), []).append(c)
        first: dict[str, Evaluation] = {}
        for same_start in by_start.values():
            for group in (same_start[i: i + FIRST_BATCH] for i in range(0, len(same_start), FIRST_BATCH)):
                ev = self._one_batch(group, sites)
                first |= {c.name: ev.window(i) for i, c in enumerate(group)}
        return first

    def _one_batch(self, group: list[Condition], sites: Sites) -> Evaluation:
        """The first window once per condition of `group`, all of the same start layer."""
        device = next(self.model.parameters()).device
        batch = self.windows[:1].expand(len(group), -1).to(device)  # (conditions, seq)
        with contextlib.ExitStack() as stack:
            stack.enter_context(zeroed_per_sample(sites, [c.sample_scalars() for c in group]))  # its hooks run first
            for sample, condition in enumerate(group):
                stack.enter_context(condition.in_sample(sample))
            stack.enter_context(self._skipping(group[0].first_layer, [0] * len(group)))
            return segment_losses(self.model, batch, self.stopwords.to(device), self.options.parts)

    def _skipping(self, first_layer: int, order: list[int] | None) -> AbstractContextManager:
        return self.prefix.skipping(first_layer, order) if self.prefix else contextlib.nullcontext()


def verify(model: nn.Module, windows: torch.Tensor, sites: Sites, weights: list[SuperWeight],
           options: VerifyOptions, progress: Callable[[str], None] = lambda _m: None) -> Verification:
    recorder = ActivationRecorder(sites, weights)
    started = time.perf_counter()
    conditions = plan(sites, weights, options, recorder) if weights else []
    setup_seconds = time.perf_counter() - started
    prefix = PrefixCache.build(model, sites, {c.first_layer for c in conditions}) if options.share_prefix else None
    run = VerificationRun(model, windows, frequent_tokens(windows), options, prefix)
    progress(f"verifying: baseline (1/{len(conditions) + 1})")
    started = time.perf_counter()
    with recorder.record():
        base = run.baseline()
    baseline_seconds = time.perf_counter() - started
    started = time.perf_counter()
    first = run.first_windows(conditions, sites) if options.early_stop else {}
    first_seconds = time.perf_counter() - started
    evaluated = []
    for i, condition in enumerate(conditions, start=2):
        progress(f"verifying: {condition.name} ({i}/{len(conditions) + 1})")
        started = time.perf_counter()
        ev = run.condition(condition, base, first.get(condition.name))
        evaluated.append(Evaluated(condition, ev, run.start_layer(condition), time.perf_counter() - started))
    evaluation = {"prefix_shared": prefix is not None and prefix.supported, "early_stop": options.early_stop,
                  "baseline_seconds": round(baseline_seconds, 4),  # what each extra condition is measured against
                  "setup_seconds": round(setup_seconds, 4),  # choosing the conditions' weights (control B's top-k)
                  "first_window_batch": len(first), "first_window_seconds": round(first_seconds, 4)}
    return conclude(base, evaluated, weights, options, evaluation)


# -- the stopping rule -----------------------------------------------------------------------------

def stopping_rule(base: Evaluation, thresholds: tuple[float, ...], precision: float) -> Settled:
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


# -- rows, verdicts and summary --------------------------------------------------------------------

def conclude(base: Evaluation, evaluated: list[Evaluated], weights: list[SuperWeight], options: VerifyOptions,
             evaluation: dict) -> Verification:
    """Rows, intervals, verdicts and summary of a verification, in memory or streamed."""
    rows, intervals = [_ablation_row(Kind.BASELINE, "baseline", base, base, paired_interval(base, base))], {}
    for e in evaluated:
        name = e.condition.name
        interval = _reported(paired_interval(e.ev, base), base.windows, options.stop_precision)
        rows.append(_ablation_row(e.condition.kind, name, e.ev, base, interval, e.condition.detail))
        timed = {"seconds": round(e.seconds, 4)} if e.seconds is not None else {}
        intervals[name] = _interval_summary(interval, base.windows, e.start_layer) | timed
    summary = _summarize(rows) | {"evaluation": evaluation} | ({"intervals": intervals} if intervals else {})
    _apply_verdicts([e.condition for e in evaluated], rows[1:], options)
    return Verification(rows, weights, summary)


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


def _apply_verdicts(conditions: list[Condition], rows: list[Ablation], options: VerifyOptions) -> None:
    """Each `Kind.WEIGHT` condition's candidate takes its row's ratio, interval and verdict."""
    control = next((row for row in rows if row.kind == Kind.RANDOM_CONTROL), None)
    clean = control is not None and control.ratio_high < options.control_max
    for condition, row in zip(conditions, rows, strict=True):
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
