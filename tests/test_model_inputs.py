"""Models that do not fit the scan as it would run by default: a context shorter than the windows
or the prompt (clipped, and the lengths used recorded), a tokenizer that is not the weights', NaN
or inf weights, a config.json that does not match the weights; and inputs that look like
something else (a binary --eval-text, a missing relative path, a budget below a model).
Each ends in a scan or in one line naming the input and the fix; nothing non-finite is written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny import BOS, VOCAB, build_tokenizer

SCAN = ["scan", "--no-save", "--device", "cpu"]
SHORT = 128  # positions of the short-context models


def edited_config(source: Path, path: Path, **changes: object) -> Path:
    shutil.copytree(source, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))
    return path


def poisoned(source: Path, path: Path, name: str, value: float) -> Path:
    """A copy of `source` with one scalar of weight `name` set to `value` (NaN, inf)."""
    shutil.copytree(source, path)
    state = load_file(path / "model.safetensors")
    state[name][0, 0] = value
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def gpt2_short(path: Path) -> Path:
    """A real GPT-2 with 128 learned positions: a window or prompt past them has no embedding."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(VOCAB), n_embd=64, n_layer=2, n_head=4, n_positions=SHORT, bos_token_id=BOS, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def opt_short(path: Path) -> Path:
    """A real OPT with 128 learned positions (its table has 2 more rows, an offset OPT adds)."""
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                       word_embed_proj_dim=64, max_position_embeddings=SHORT, bos_token_id=BOS, eos_token_id=2, pad_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def foreign_bos(source: Path, path: Path) -> Path:
    """The tiny Llama with a tokenizer that prepends BOS id 256, one past its 256-row embedding."""
    shutil.copytree(source, path)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["post_processor"]["special_tokens"]["[BOS]"]["ids"] = [len(VOCAB)]
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    return path


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    llama = tiny("llama", effect=True).path
    return {
        "gpt2_short": gpt2_short(root / "gpt2-short"),
        "opt_short": opt_short(root / "opt-short"),
        "llama_short": edited_config(llama, root / "llama-short", max_position_embeddings=SHORT),
        "nan_down": poisoned(llama, root / "nan-down", "model.layers.3.mlp.down_proj.weight", float("nan")),
        "inf_attention": poisoned(llama, root / "inf-attention", "model.layers.2.self_attn.q_proj.weight", float("inf")),
        "nan_head": poisoned(llama, root / "nan-head", "lm_head.weight", float("nan")),
        "foreign_bos": foreign_bos(llama, root / "foreign-bos"),
        "mismatch": edited_config(llama, root / "mismatch", intermediate_size=200),
    }


@pytest.mark.parametrize("name", ["gpt2_short", "opt_short", "llama_short"])
def test_windows_and_prompts_are_clipped_to_the_context(superweights, models, zipf_text, tmp_path, name):
    """GPT-2 and OPT would index past their position tables (IndexError); a Llama would run past its context."""
    long_prompt = " ".join(VOCAB[3:] * 2)  # ~500 tokens
    out = tmp_path / "scan.json"
    status, _, err = superweights(*SCAN, str(models[name]), "--eval-text", str(zipf_text), "--eval-tokens", "1024",
                                  "--seq-len", "512", "--prompt", long_prompt, "--json", str(out))
    assert status == 0, err
    scan = json.loads(out.read_text())
    assert (scan["config"]["seq_len"], scan["config"]["seq_len_used"], scan["config"]["prompt_tokens"]) == (512, SHORT, [SHORT])
    assert scan["ablations"] and all(a["tokens"] % (SHORT - 1) == 0 for a in scan["ablations"])


def test_a_model_without_a_position_limit_reads_whole_windows_and_prompts(superweights, zipf_text, tmp_path):
    """XLNet's config gives -1 positions (no limit): its windows were cut to -1 tokens (a
    RuntimeError traceback, "invalid shape dimension -256") and its prompt lost its last token."""
    from catalog import zoo

    zoo.build("xlnet").save_pretrained(tmp_path / "xlnet")
    build_tokenizer().save_pretrained(tmp_path / "xlnet")
    out = tmp_path / "scan.json"
    status, _, err = superweights(*SCAN, str(tmp_path / "xlnet"), "--eval-text", str(zipf_text), "--eval-tokens", "256",
                                  "--seq-len", "64", "--prompt", "the cat", "--json", str(out))
    assert status == 0, err
    scan = json.loads(out.read_text())
    assert (scan["config"]["seq_len_used"], scan["config"]["prompt_tokens"]) == (64, [len(build_tokenizer()("the cat").input_ids)])
    assert scan["ablations"][0]["tokens"] == 4 * 63


@pytest.mark.parametrize("name,args,says", [  # the weight named, not the number it spoiled (detection's maxima, the perplexity)
    ("nan_down", ["--no-verify"], r"a value of model\.layers\.3\.mlp\.down_proj\.weight is not a finite number \(NaN or inf\)"),
    ("inf_attention", ["--no-verify"], r"a value of model\.layers\.2\.self_attn\.q_proj\.weight is not a finite number \(NaN or inf\)"),
    ("nan_head", [], r"a value of lm_head\.weight is not a finite number \(NaN or inf\)"),
])
def test_nan_or_inf_weights_are_one_line_and_reach_no_file_or_catalog(superweights, models, zipf_text, tmp_path, name, args, says):
    url, out = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "scan.json"
    status, _, err = superweights("scan", str(models[name]), "--device", "cpu", "--db", url, "--json", str(out),
                                  "--eval-text", str(zipf_text), "--eval-tokens", "512", "--seq-len", "64", *args)
    assert status == 1 and re.fullmatch(f"error: {re.escape(str(models[name]))}: {says}: the weights hold NaN or inf, or the "
                                        r"dtype overflows; try --dtype float32, or download the checkpoint again\.", err.strip()), err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "env") == ["catalog.db"]  # no JSON, no temporary
    assert superweights("sql", "SELECT count(*) AS n FROM scans", "--db", url, "--format", "csv")[1] == "n\n0\n"


def test_a_tokenizer_id_outside_the_embedding_is_one_line(superweights, models):
    status, _, err = superweights(*SCAN, "--no-verify", str(models["foreign_bos"]))
    assert status == 1 and err.strip() == (f"error: {models['foreign_bos']}: its tokenizer gives token id 256 for the prompt, "
                                           "but the embedding has 256 rows: the tokenizer does not belong to these weights.")


def test_a_config_that_does_not_match_the_weights_says_so(superweights, models):
    status, _, err = superweights(*SCAN, "--no-verify", str(models["mismatch"]))
    assert status == 1 and "config.json does not match the weights: model.layers." in err
    assert "is [64, 160] in the checkpoint but [64, 200] by config.json" in err and "download it again" not in err


def test_a_binary_eval_text_is_refused(superweights, tiny, tmp_path):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(bytes(range(256)) * 16)
    status, _, err = superweights(*SCAN, str(tiny("llama").path), "--eval-text", str(binary))
    assert status == 1 and err.strip() == f"error: --eval-text: {binary} is not UTF-8 text (byte 128); give a plain text file."
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"some text\0more text")
    status, _, err = superweights(*SCAN, str(tiny("llama").path), "--eval-text", str(nul))
    assert status == 1 and "holds NUL bytes, so it is binary" in err


def test_a_missing_relative_path_is_told_as_a_path(superweights, tmp_path, monkeypatch):
    """`models/llama` could be a Hub id; with a local `models/` it was surely a path with a typo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    status, _, err = superweights(*SCAN, "models/llama")
    assert status == 1 and err.startswith("error: models/llama: not found. models/ has no llama: check the path. As a Hub repo id:")


def test_a_budget_below_the_model_names_both_sizes_in_readable_units(superweights, tiny):
    status, _, err = superweights(*SCAN, "--no-verify", str(tiny("llama").path), "--max-gpu-memory", "1KB")
    assert status == 1 and "needs at least " in err and " KiB of weights" in err and "more than 1000 B." in err


def test_a_survey_row_holds_the_line_that_scan_prints(models, zipf_text):
    """The survey's scan stage, called as Ray calls it: the former IndexError scans, NaN weights fail
    with the scan's one line, and an unexpected error is called a bug (not a bare AttributeError)."""
    from catalog.config import ScanOptions
    from workers.tasks import Scanner, describe_error, fetch

    scanner = Scanner(ScanOptions(device="cpu", eval_text=zipf_text, eval_tokens=512, seq_len=256))
    short = scanner(fetch(str(models["gpt2_short"])))
    assert short.error is None and short.result.config["seq_len_used"] == SHORT
    poisoned = scanner(fetch(str(models["nan_head"])))
    assert poisoned.result is None and poisoned.error.startswith(
        f"{models['nan_head']}: a value of lm_head.weight is not a finite number (NaN or inf)")
    assert describe_error(AttributeError("'float' object has no attribute 'numerator'")) == (
        "unexpected AttributeError: 'float' object has no attribute 'numerator'; "
        "`SUPERWEIGHTS_DEBUG=1 superweights scan` of this model alone shows the traceback.")
