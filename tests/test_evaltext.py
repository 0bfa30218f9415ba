"""The evaluation windows: the first tokens of the text, as the whole text's tokenization gives them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from catalog import evaltext
from catalog.evaltext import load_eval_text


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.mark.parametrize("tokens,chars_per_token", [(1, 6), (100, 6), (4096, 6), (4096, 1), (10**7, 6)])
def test_windows_are_the_whole_texts_first_tokens(smollm2_tokenizer, eval_text, monkeypatch, tokens, chars_per_token):
    """Tokenizing a prefix of the text gives the ids that tokenizing all of it gives, up to `tokens`
    (all of them when the text is shorter); also when the first prefix is too short and grows."""
    monkeypatch.setattr(evaltext, "CHARS_PER_TOKEN", chars_per_token)
    text = load_eval_text(eval_text)
    whole = smollm2_tokenizer(text.text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert torch.equal(text.first_ids(smollm2_tokenizer, tokens), whole[:tokens])
    if tokens >= 100:
        seq_len = 50
        windows = text.windows(smollm2_tokenizer, tokens, seq_len)
        n = min(tokens, len(whole)) // seq_len
        assert torch.equal(windows, whole[: n * seq_len].reshape(n, seq_len))


def test_text_without_whitespace(smollm2_tokenizer, tmp_path):
    """A text with no space or line break is cut anywhere, and still matches (the margin covers the cut)."""
    path = tmp_path / "dense.txt"
    path.write_text("superweight" * 5000)
    text = load_eval_text(path)
    whole = smollm2_tokenizer(text.text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert torch.equal(text.first_ids(smollm2_tokenizer, 300), whole[:300])
