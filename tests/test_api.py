"""The Python API: `from catalog import scan, ScanOptions`, on a source or on a model in memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_scan_of_a_model_in_memory_finds_the_planted_weight_and_leaves_the_weights_as_they_were(tiny, zipf_text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from catalog import ScanOptions, scan

    planted = tiny("llama", effect=True)
    model = AutoModelForCausalLM.from_pretrained(planted.path)
    tokenizer = AutoTokenizer.from_pretrained(planted.path)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = scan(model, ScanOptions(device="cpu", eval_text=zipf_text, eval_tokens=512, seq_len=64), tokenizer=tokenizer, name="my-model")
    found = {(w.layer, w.row, w.col): w.verdict for w in result.super_weights}
    assert found[(planted.layer, planted.row, planted.col)] == "confirmed"
    assert result.model.source == "my-model" and result.model.format == "in-memory" and result.summary["loader"] == "in-memory"
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    # the same weights from their files, in the in-memory model's float32 (auto may pick bfloat16 on this CPU)
    from_files = scan(str(planted.path), ScanOptions(device="cpu", dtype="float32", eval_text=zipf_text, eval_tokens=512, seq_len=64))
    assert [(w.layer, w.row, w.col, w.verdict) for w in from_files.super_weights] == [(w.layer, w.row, w.col,
                                                                                       w.verdict) for w in result.super_weights]
    assert [a.ratio for a in from_files.ablations] == pytest.approx([a.ratio for a in result.ablations], rel=1e-5)


def test_a_model_in_memory_needs_its_tokenizer(tiny):
    from transformers import AutoModelForCausalLM

    from catalog import ScanOptions, scan
    from catalog.errors import BadOptionError

    model = AutoModelForCausalLM.from_pretrained(tiny("llama", effect=True).path)
    with pytest.raises(BadOptionError, match="needs its tokenizer"):
        scan(model, ScanOptions(device="cpu"))
    with pytest.raises(BadOptionError, match="tokenizer= and name= are for a model in memory"):  # not silently ignored
        scan(str(tiny("llama", effect=True).path), ScanOptions(device="cpu"), tokenizer=object())


def test_the_readme_example_runs_and_finds_smollm2s_super_weight(smollm2_gguf):
    block = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", README, re.S).group(1)
    assert str(smollm2_gguf).endswith("superweights/models/SmolLM2-135M-Instruct.Q4_1.gguf")  # where the example looks
    home = {"SUPERWEIGHTS_HOME": str(smollm2_gguf.parents[1])}  # the user's, where `make fixtures` put the text too
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=900, env=os.environ | home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^11 \[507, 1229\] confirmed [0-9.]+$", done.stdout, re.M), done.stdout
