"""Evaluation text for perplexity: a local file, wikitext-2 (as in the paper: the Hub dataset
`Salesforce/wikitext` through `datasets`, downloaded once into HF_HOME and read from there
afterwards, offline too), or the offline default that `make fixtures` fetches (the 1911
Britannica article on Shakespeare).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from catalog import settings
from catalog.errors import BadOptionError, first_line

DATASETS = ("wikitext2",)
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")  # the Hub dataset, its config and split (the paper's)
CHARS_PER_TOKEN = 6  # a first guess at the prefix to tokenize: English runs about 4 characters a token
MARGIN = 64  # tokens past the last one kept, so that the cut cannot change it


@dataclass(frozen=True)
class EvalText:
    name: str
    sha256: str
    text: str

    def windows(self, tokenizer, tokens: int, seq_len: int) -> torch.Tensor:
        """The first `tokens` tokens as non-overlapping rows of `seq_len`: (n_windows, seq_len)."""
        ids = self.first_ids(tokenizer, tokens)
        n = len(ids) // seq_len
        if n == 0:
            raise BadOptionError("--eval-text",
                                 f"{self.name} has {len(ids)} tokens, fewer than one window of --seq-len {seq_len}; give a longer text.")
        return ids[: n * seq_len].reshape(n, seq_len)

    def first_ids(self, tokenizer, tokens: int) -> torch.Tensor:
        """The text's first `tokens` token ids, from as little of the text as gives them.

        A scan reads a few thousand tokens, and tokenizing a whole long text (wikitext-2's test
        split) costs a noticeable part of a fast verification. A prefix cut at
        whitespace, MARGIN tokens longer than needed, tokenizes like the whole text up to there
        (tokenizers merge within words); the prefix doubles until it is long enough.
        """
        chars = CHARS_PER_TOKEN * (tokens + MARGIN)
        while True:
            cut = _whitespace_before(self.text, chars)
            ids = tokenizer(self.text[:cut], add_special_tokens=False, return_tensors="pt").input_ids[0]
            if cut == len(self.text) or len(ids) >= tokens + MARGIN:
                return ids[:tokens]
            chars *= 2


def _whitespace_before(text: str, chars: int) -> int:
    """Where to cut `text` at most `chars` long: at its last space or line break (the whole text if
    it is shorter; at `chars` where it has no whitespace)."""
    if chars >= len(text):
        return len(text)
    return max(text.rfind(" ", 0, chars), text.rfind("\n", 0, chars)) + 1 or chars


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
    text = _text(path, data)
    if not text.strip():
        raise BadOptionError("--eval-text", f"{path} is empty; give a file with some English prose.")
    return EvalText(path.name, hashlib.sha256(data).hexdigest(), text)


def _text(path: Path, data: bytes) -> str:
    """The file as UTF-8 text; a binary file (invalid UTF-8, or NUL bytes) is refused, not read as noise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadOptionError("--eval-text", f"{path} is not UTF-8 text (byte {exc.start}); give a plain text file.") from exc
    if "\0" in text:
        raise BadOptionError("--eval-text", f"{path} holds NUL bytes, so it is binary; give a plain text file.")
    return text


def _dataset(name: str) -> EvalText:
    if name not in DATASETS:
        raise BadOptionError("--eval-dataset", f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
    try:
        import datasets
    except ImportError as exc:
        raise BadOptionError("--eval-dataset", "needs the `datasets` package: pip install 'superweight-catalog[wikitext]'.") from exc
    repo, config, split = WIKITEXT
    try:
        rows = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline and not cached, or the Hub refused
        raise BadOptionError("--eval-dataset", f"cannot load {repo} ({config}, {split}): {first_line(exc)[:160]}; "
                                               "offline, pass --eval-text FILE instead.") from exc
    text = "\n\n".join(rows["text"])  # the paper's and the GPTQ scripts' joining of the test split
    return EvalText(f"{config}/{split}", hashlib.sha256(text.encode()).hexdigest(), text)
