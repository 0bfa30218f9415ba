"""Perplexity of a causal LM over fixed token windows, plus the probability mass it puts on the
text's most frequent tokens (the paper's stop-word shift, Sec. 3.2: without the super weight,
mass moves onto stop words).

Conditions are compared with the baseline window by window (a paired comparison): the per-window
difference of mean NLL is the log of that window's perplexity ratio, and its t-interval over the
windows evaluated so far says how well the ratio is known. `evaluate(..., settled=...)` stops as
soon as a caller's rule says the verdict cannot change any more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# two-sided 95% quantiles of Student's t, by degrees of freedom 1..30 (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Evaluation:
    ppl: float
    tokens: int  # tokens predicted
    nll: list[float]  # mean negative log-likelihood per window, for intervals
    stopword_mass: float  # mean probability on the `stopwords` ids


@dataclass(frozen=True)
class Interval:
    """A perplexity ratio against the baseline, over the first `windows` windows, with its 95% interval."""

    ratio: float
    low: float
    high: float
    windows: int


Settled = Callable[[list[float]], bool]  # per-window NLL so far -> may the evaluation stop?


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else 1.96


def paired_interval(nll: list[float], base_nll: list[float]) -> Interval:
    """The ratio exp(mean d) of d = nll - base_nll over the windows in `nll`, with a t-interval.

    Windows have equal length, so the mean over windows is the mean over tokens and exp(mean d)
    is exactly the ratio of the two perplexities on those windows.
    """
    d = [a - b for a, b in zip(nll, base_nll)]
    mean = sum(d) / len(d)
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(min(mean + half, 700.0)), len(d))


def frequent_tokens(windows: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Ids of the k most frequent tokens of the evaluation text: its stop words."""
    ids, counts = windows.flatten().unique(return_counts=True)
    return ids[counts.argsort(descending=True)[:k]]


@torch.inference_mode()
def evaluate(model: nn.Module, windows: torch.Tensor, stopwords: torch.Tensor, batch_size: int = 4,
             settled: Settled | None = None) -> Evaluation:
    """Mean next-token NLL over the windows (each one sequence; no BOS added), in order.

    With `settled`, stops after the first batch at which `settled(nll so far)` holds; `tokens`
    then counts only the windows evaluated. Without it, every window is evaluated (plain).
    """
    device = next(model.parameters()).device
    stopwords = stopwords.to(device)
    nll, mass = [], []
    for batch in windows.split(batch_size):
        batch_nll, batch_mass = _window_losses(model, batch.to(device), stopwords)
        nll += batch_nll
        mass += batch_mass
        if settled is not None and settled(nll):
            break
    mean = sum(nll) / len(nll)
    return Evaluation(math.exp(mean), len(nll) * (windows.shape[1] - 1), nll, sum(mass) / len(mass))


def _window_losses(model: nn.Module, batch: torch.Tensor, stopwords: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per window of `batch` (b, seq): mean next-token NLL and mean probability on the stop words."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # (b, seq-1, vocab)
    logp = logits.log_softmax(-1)
    token_nll = -logp.gather(-1, batch[:, 1:, None]).squeeze(-1)  # (b, seq-1)
    return token_nll.mean(-1).tolist(), logp[..., stopwords].exp().sum(-1).mean(-1).tolist()
