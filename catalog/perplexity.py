"""Perplexity of a causal LM over fixed token windows, plus the probability mass it puts on the
text's most frequent tokens (the paper's stop-word shift, Sec. 3.2: without the super weight,
mass moves onto stop words).

Conditions are compared with the baseline on the same tokens (a paired comparison). Each
window's predicted tokens are split into `parts` consecutive segments (511 tokens: 128, 128,
128, 127), and the observations are the per-segment differences of mean NLL, so that one window
already gives an interval. The ratio itself is exact: exp of the token-weighted mean difference,
which is the ratio of the two perplexities on the tokens evaluated; the t-interval around its
log uses the segments' unweighted standard error. `evaluate(..., settled=...)` checks after one
window, then after batches that double, and stops as soon as a caller's rule says the verdict
cannot change any more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from catalog.config import PARTS
from catalog.errors import NonFiniteError

# A CPU makes float32 log-probabilities this many positions at a time (32 x 49152 floats, 6 MB,
# stay in its cache): SmolLM2's four windows of logits take 0.14 s where whole windows took
# 0.49 s, the same bits, as each position's log_softmax is its own (benchmarks/README.md).
CPU_ROWS = 32

# two-sided 95% quantiles of Student's t, by degrees of freedom 1..30 (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Evaluation:
    """The windows evaluated so far, by segment (a window's segments in order, windows in order).

    Token counts are kept per segment because segments differ by a token: perplexity and ratios
    are exact token means, not means of segment means.
    """

    nll: list[float] = field(default_factory=list)  # mean negative log-likelihood per segment
    counts: list[int] = field(default_factory=list)  # tokens predicted per segment
    mass: list[float] = field(default_factory=list)  # mean probability on the `stopwords` ids, per window

    @property
    def tokens(self) -> int:
        return sum(self.counts)

    @property
    def windows(self) -> int:
        return len(self.mass)

    @property
    def ppl(self) -> float:
        return math.exp(sum(n * c for n, c in zip(self.nll, self.counts)) / self.tokens)

    @property
    def stopword_mass(self) -> float:
        return sum(self.mass) / len(self.mass)

    def window(self, i: int) -> Evaluation:
        """Window `i` alone (segments are per window, `len(nll) // windows` of them)."""
        parts = len(self.nll) // self.windows
        return Evaluation(self.nll[i * parts: (i + 1) * parts], self.counts[i * parts: (i + 1) * parts], self.mass[i: i + 1])

    def first(self, windows: int) -> Evaluation:
        """The first `windows` windows: the baseline on exactly the tokens of a condition that stopped there."""
        parts = len(self.nll) // self.windows
        return Evaluation(self.nll[: windows * parts], self.counts[: windows * parts], self.mass[:windows])

    def extend(self, more: Evaluation) -> None:
        self.nll += more.nll
        self.counts += more.counts
        self.mass += more.mass


@dataclass(frozen=True)
class Interval:
    """A perplexity ratio against the baseline, over the first `windows` windows, with its 95% interval."""

    ratio: float
    low: float
    high: float
    windows: int


Settled = Callable[[Evaluation], bool]  # the evaluation so far -> may it stop?


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else 1.96


def paired_interval(ev: Evaluation, base: Evaluation) -> Interval:
    """The ratio of `ev`'s perplexity to `base`'s on the segments `ev` covers, with a t-interval.

    The ratio is exp(token-weighted mean of d), d = segment NLL differences: exactly ppl / base
    ppl on those tokens. The interval's half-width is t * the unweighted standard error of d.
    """
    d = [a - b for a, b in zip(ev.nll, base.nll)]
    mean = sum(x * c for x, c in zip(d, ev.counts)) / ev.tokens
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(min(mean + half, 700.0)), ev.windows)


def frequent_tokens(windows: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Ids of the k most frequent tokens of the evaluation text: its stop words."""
    ids, counts = windows.flatten().unique(return_counts=True)
    return ids[counts.argsort(descending=True)[:k]]


@torch.inference_mode()
def evaluate(model: nn.Module, windows: torch.Tensor, stopwords: torch.Tensor, batch_size: int = 4,
             settled: Settled | None = None, parts: int = PARTS, so_far: Evaluation | None = None) -> Evaluation:
    """Next-token NLL over the windows (each one sequence; no BOS added), in order, by segment.

    Without `settled`, every window is evaluated, `batch_size` at a time. With it, the batches
    are 1, 1, 2, 4, ... windows (capped at `batch_size`): a first check after one window, then
    few checks (each costs a synchronisation, dear on launch-bound small models); evaluation
    stops after the first batch at which `settled(evaluation so far)` holds. `so_far`: the first
    windows, already evaluated elsewhere (a batch of conditions' first windows); it goes on from there.
    """
    device = next(model.parameters()).device
    stopwords = stopwords.to(device)
    ev = Evaluation() if so_far is None else Evaluation(list(so_far.nll), list(so_far.counts), list(so_far.mass))
    if settled is not None and ev.windows and settled(ev):
        return ev
    for batch in _batches(windows, batch_size, doubling=settled is not None, start=ev.windows):
        ev.extend(segment_losses(model, batch.to(device), stopwords, parts))
        if settled is not None and settled(ev):
            break
    return ev


def _batches(windows: torch.Tensor, batch_size: int, doubling: bool, start: int = 0) -> Iterator[torch.Tensor]:
    """`batch_size` windows at a time, or, doubling, as many as ran so far (1, 1, 2, 4, ...) up to it."""
    size = (min(max(start, 1), batch_size)) if doubling else batch_size
    while start < len(windows):
        yield windows[start: start + size]
        start += size
        size = min(start, batch_size) if doubling else batch_size


def token_losses(logits: torch.Tensor, targets: torch.Tensor, stopwords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's NLL of its target and probability on the stop words, from float32
    log-probabilities: a GPU makes a window's at once; a CPU `CPU_ROWS` positions at a time."""
    rows = CPU_ROWS if logits.device.type == "cpu" else len(logits)
    nll, mass = [], []
    for part, ids in zip(logits.split(rows), targets.split(rows)):
        logp = part.float().log_softmax(-1)
        nll.append(-logp.gather(-1, ids[:, None]).squeeze(-1))
        mass.append(logp[:, stopwords].exp().sum(-1))
    return torch.cat(nll), torch.cat(mass)


def segment_losses(model: nn.Module, batch: torch.Tensor, stopwords: torch.Tensor, parts: int) -> Evaluation:
    """Per window of `batch` (b, seq): mean next-token NLL of each of `parts` consecutive segments
    of its predicted tokens, and the mean probability on the stop words."""
    logits = model(input_ids=batch, use_cache=False).logits  # (b, seq, vocab)
    nll, mass = [], []
    for window, ids in zip(logits, batch):
        token_nll, token_mass = token_losses(window[:-1], ids[1:], stopwords)  # (seq-1,) each
        segments = token_nll.tensor_split(min(parts, len(token_nll)))
        nll.append(torch.stack([seg.mean() for seg in segments]))
        mass.append(token_mass.mean())
    counts = [len(seg) for seg in segments] * len(batch)
    losses = torch.cat(nll).tolist()
    if not all(map(math.isfinite, losses)):  # NaN or inf logits: no perplexity, no interval
        raise NonFiniteError("the perplexity on the evaluation text")
    return Evaluation(losses, counts, torch.stack(mass).tolist())
