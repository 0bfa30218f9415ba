"""Evaluation text for perplexity: a local file, wikitext-2 (online, as in the paper), or the
offline default that `make fixtures` fetches (the 1911 Britannica article on Shakespeare).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from catalog import settings
from catalog.errors import BadOptionError

DATASETS = ("wikitext2",)


@dataclass(frozen=True)
class EvalText:
    name: str
    sha256: str
    text: str

    def windows(self, tokenizer, tokens: int, seq_len: int) -> torch.Tensor:
        """The first `tokens` tokens as non-overlapping rows of `seq_len`: (n_windows, seq_len)."""
        ids = tokenizer(self.text, add_special_tokens=False, return_tensors="pt").input_ids[0][:tokens]
        n = len(ids) // seq_len
        if n == 0:
            raise BadOptionError("--eval-text", f"{self.name} has {len(ids)} tokens, fewer than one window of --seq-len {seq_len}; give a longer text.")
        return ids[: n * seq_len].reshape(n, seq_len)


def load_eval_text(path: Path | None = None, dataset: str | None = None) -> EvalText:
    """The user's file, else the named dataset, else the offline default."""
    if dataset:
        return _dataset(dataset)
    return _file(Path(path) if path else settings.default_eval_text(), default=path is None)


def _file(path: Path, default: bool) -> EvalText:
    if not path.is_file():
        fix = "run `make fixtures` or pass --eval-text FILE" if default else "give an existing text file"
        raise BadOptionError("--eval-text", f"{path} does not exist; {fix}.")
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise BadOptionError("--eval-text", f"{path} is empty; give a file with some English prose.")
    return EvalText(path.name, hashlib.sha256(data).hexdigest(), text)


def _dataset(name: str) -> EvalText:
    if name not in DATASETS:
        raise BadOptionError("--eval-dataset", f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
    try:
        import datasets
    except ImportError as exc:
        raise BadOptionError("--eval-dataset", "needs the `datasets` package: pip install 'superweight-catalog[wikitext]'.") from exc
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # offline, or the Hub refused
        raise BadOptionError("--eval-dataset", f"cannot load wikitext-2 ({str(exc)[:120]}); offline, pass --eval-text FILE instead.") from exc
    text = "\n\n".join(rows["text"])
    return EvalText("wikitext-2-raw-v1/test", hashlib.sha256(text.encode()).hexdigest(), text)
