"""The planted checkpoints keep the promises that the causal checks build on, measured
here with plain transformers: zeroing an `effect=True` super weight multiplies perplexity on the
Zipf text several times; zeroing an inert spike, or an `effect=False` super weight, does not.
"""

from __future__ import annotations

import pytest
import torch

from tiny import KINDS, Plant, Planted, perplexity, write_zipf_text

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def zipf_text(tmp_path_factory) -> str:
    return write_zipf_text(tmp_path_factory.mktemp("text") / "zipf.txt", words=600).read_text()


def ppl_ratio(planted: Planted, plant: Plant, text: str) -> float:
    """Perplexity with `plant`'s weight zeroed over the perplexity of the checkpoint as saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(planted.path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(planted.path)
    base = perplexity(model, tokenizer, text)
    with torch.no_grad():
        model.state_dict()[plant.param][plant.tensor_index] = 0.0
    return perplexity(model, tokenizer, text) / base


@pytest.mark.parametrize("kind", KINDS)
def test_super_weight_with_effect_matters_and_the_inert_spike_does_not(tiny, zipf_text, kind):
    planted = tiny(kind, effect=True, inert=True)
    assert ppl_ratio(planted, planted, zipf_text) > 5
    assert ppl_ratio(planted, planted.inert, zipf_text) == pytest.approx(1, abs=0.02)


def test_super_weight_without_effect_does_not_matter(tiny, zipf_text):
    planted = tiny("llama")
    assert ppl_ratio(planted, planted, zipf_text) == pytest.approx(1, abs=0.02)
