"""Perplexity of a causal LM over fixed token windows, plus the probability mass it puts on the
text's most frequent tokens (the paper's stop-word shift, Sec. 3.2: without the super weight,
mass moves onto stop words).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Evaluation:
    ppl: float
    tokens: int  # tokens predicted
    nll: list[float]  # mean negative log-likelihood per window, for intervals
    stopword_mass: float  # mean probability on the `stopwords` ids


def frequent_tokens(windows: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Ids of the k most frequent tokens of the evaluation text: its stop words."""
    ids, counts = windows.flatten().unique(return_counts=True)
    return ids[counts.argsort(descending=True)[:k]]


@torch.inference_mode()
def evaluate(model: nn.Module, windows: torch.Tensor, stopwords: torch.Tensor, batch_size: int = 4) -> Evaluation:
    """Mean next-token NLL over every window (each window is one sequence; no BOS added)."""
    device = next(model.parameters()).device
    nll, mass = [], []
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # (b, seq-1, vocab)
        logp = logits.log_softmax(-1)
        token_nll = -logp.gather(-1, batch[:, 1:, None]).squeeze(-1)  # (b, seq-1)
        nll += token_nll.mean(-1).tolist()
        mass += logp[..., stopwords.to(device)].exp().sum(-1).mean(-1).tolist()
    mean = sum(nll) / len(nll)
    return Evaluation(math.exp(mean), windows.shape[0] * (windows.shape[1] - 1), nll, sum(mass) / len(mass))
