"""Bad input, as a user meets it: `superweights scan` ends with one line on stderr naming the input
and the fix, a non-zero exit, no traceback, and no --json file left behind.

All the commands run at once in one module fixture (each spends seconds importing torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gguf_files import write_big_endian, write_gguf
from superweights_cli import isolated_env, one_line_error, run_many

SCAN = ["scan", "--no-verify", "--no-save", "--device", "cpu"]
REMOTE_CODE = '''
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).write_text("")  # proof that this file was executed


class CustomConfig(LlamaConfig):
    model_type = "tiny_custom"


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
'''


@dataclass
class Bad:
    """A bad input: the scan arguments, and what its error line must contain."""

    args: list[str]
    says: tuple[str, ...]


class Evil:
    """Unpickling this runs os.mkdir: a pickle checkpoint can run any code when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def copy_checkpoint(planted_path: Path, path: Path) -> Path:
    shutil.copytree(planted_path, path)
    return path


def truncated(source: Path, path: Path, size: int) -> Path:
    path.write_bytes(source.read_bytes()[:size])
    return path


def pickle_only(tiny, path: Path) -> Path:
    """The tiny Llama with its weights as pytorch_model.bin instead of safetensors."""
    from safetensors.torch import load_file

    path = copy_checkpoint(tiny("llama").path, path)
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def remote_code(tiny, path: Path) -> Path:
    """A checkpoint whose config names classes in its own Python file (auto_map), an unknown type.

    Importing that file creates `path.ran`.
    """
    path = copy_checkpoint(tiny("llama").path, path)
    config = json.loads((path / "config.json").read_text())
    config |= {"model_type": "tiny_custom", "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(REMOTE_CODE.format(marker=str(path.with_suffix(".ran"))))
    return path


def remote_tokenizer(tiny, path: Path) -> Path:
    """The tiny Llama whose tokenizer class lives in the repo's own Python file (tokenizer_config.json's
    auto_map), as some Hub repos ship theirs. Importing that file creates `path.ran`."""
    path = copy_checkpoint(tiny("llama").path, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config |= {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["tokenizer.CustomTokenizer", None]}}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "tokenizer.py").write_text(f"from pathlib import Path\nPath({str(path.with_suffix('.ran'))!r}).write_text('')\n"
                                       "from transformers import PreTrainedTokenizerFast\n\n\n"
                                       "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return path


def unknown_type(tiny, path: Path) -> Path:
    """The tiny Llama with a model type that the installed transformers does not know either."""
    path = copy_checkpoint(tiny("llama").path, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "brand_new_arch"}))
    return path


def without_tokenizer(tiny, path: Path) -> Path:
    """The tiny Llama's weights and config alone, as `model.save_pretrained` leaves them."""
    path = copy_checkpoint(tiny("llama").path, path)
    for file in path.glob("*token*"):
        file.unlink()
    return path


def hostile_index(tiny, path: Path, weight_map: object) -> Path:
    """The tiny Llama sharded (into one shard), its index's weight map `weight_map`."""
    path = copy_checkpoint(tiny("llama").path, path)
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def device_shard(tiny, path: Path) -> Path:
    """The tiny Llama whose model.safetensors is a link to /dev/zero, which reads without end."""
    path = copy_checkpoint(tiny("llama").path, path)
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").symlink_to("/dev/zero")
    return path


def partial(tiny, path: Path) -> Path:
    """The tiny Llama without one of its down projections, as a shard lost on the way leaves it."""
    from safetensors.torch import load_file, save_file

    path = copy_checkpoint(tiny("llama").path, path)
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def unsupported(path: Path) -> Path:
    """A real tiny Mamba checkpoint: transformers loads it, but its blocks hold no feed-forward part."""
    from transformers import AutoModelForCausalLM, MambaConfig

    config = MambaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, state_size=8, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def part_missing(path: Path) -> Path:
    """The second of a split GGUF's three parts, its third not beside it."""
    second = write_gguf(path.with_suffix(".gguf"), "llama", split=8)
    (path.parent / "parts-00003-of-00003.gguf").unlink()
    return second


@pytest.fixture(scope="module")
def inputs(tiny, smollm2_gguf, tmp_path_factory) -> dict[str, Bad]:
    root = tmp_path_factory.mktemp("bad")
    llama = tiny("llama").path
    no_config = root / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    cut = copy_checkpoint(llama, root / "cut-safetensors")
    truncated(llama / "model.safetensors", cut / "model.safetensors", (llama / "model.safetensors").stat().st_size // 2)
    evil = copy_checkpoint(llama, root / "evil-pickle")
    (evil / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil(root / "pwned")}, evil / "pytorch_model.bin")
    return {
        "missing_path": Bad([str(root / "no-such-dir")], (str(root / "no-such-dir"), "not found", "Give an existing checkpoint")),
        "unknown_repo": Bad(["org/no-such-model"], ("org/no-such-model", "HF_HUB_OFFLINE")),
        "no_config": Bad([str(no_config)], (str(no_config), "no config.json")),
        "cut_gguf": Bad([str(truncated(smollm2_gguf, root / "cut.gguf", 3 * 2**20))], ("cut.gguf", "truncated or corrupt",
                                                                                       "download it again")),
        "cut_gguf_vocabulary": Bad([str(truncated(smollm2_gguf, root / "cut-vocab.gguf", 2**20))],  # in the skipped strings
                                   ("cut-vocab.gguf", "GGUF metadata ends early", "download it again")),
        "cut_safetensors": Bad([str(cut)], (str(cut), "truncated or corrupt", "download it again")),
        "pickle_refused": Bad([str(pickle_only(tiny, root / "pickle"))], ("pickle", "--allow-pickle", "convert to safetensors")),
        "pickle_unsafe": Bad(["--allow-pickle", str(evil)], (str(evil), "objects other than tensors", "weights_only=True refused")),
        "remote_code": Bad([str(remote_code(tiny, root / "custom"))], ("custom", "needs remote code", "--trust-remote-code")),
        "empty_prompt": Bad(["--prompt", "ok", "--prompt", "", str(llama)], ("--prompt", "empty prompt")),
        "unsupported": Bad([str(unsupported(root / "mamba"))], ("mamba", "cannot scan model type 'mamba'",
                                                                "no feed-forward output projection")),
        "unknown_type": Bad([str(unknown_type(tiny, root / "new"))], ("new", "'brand_new_arch'", "does not know it",
                                                                      "upgrade transformers")),
        "no_tokenizer": Bad([str(without_tokenizer(tiny, root / "weights-only"))], ("weights-only", "cannot load its tokenizer",
                                                                                     "tokenizer.save_pretrained(DIR)")),
        "gguf_no_tokenizer": Bad([str(write_gguf(root / "no-vocab.gguf", "llama"))], ("no-vocab.gguf", "cannot load its tokenizer",
                                                                                     "no readable tokenizer", "convert_hf_to_gguf.py")),
        "remote_tokenizer": Bad([str(remote_tokenizer(tiny, root / "custom-tokenizer"))],
                                ("custom-tokenizer", "its tokenizer needs remote code", "--trust-remote-code")),
        "partial": Bad([str(partial(tiny, root / "partial"))], ("partial", "lacks weights of the model",
                                                                 "model.layers.1.mlp.down_proj.weight", "random values")),
        "split_gguf": Bad([str(write_gguf(root / "split.gguf", "stablelm", split=8))],  # an architecture transformers reads
                          ("split-00001-of-00004.gguf is part 1 of a GGUF split into 4 files", "reads one file",
                           "llama-gguf-split --merge split-00001-of-00004.gguf merged.gguf")),
        "big_endian_gguf": Bad([str(write_big_endian(root / "big.gguf"))], ("cannot load the checkpoint: big.gguf is a big-endian GGUF",
                                                                            "`gguf-convert-endian big.gguf little`")),
        "split_gguf_part_missing": Bad([str(part_missing(root / "parts"))], ("parts-00002-of-00003.gguf",
                                                                             "No such file", "parts-00003-of-00003.gguf")),
        "index_outside": Bad([str(hostile_index(tiny, root / "index-up", {"lm_head.weight": "../../../../dev/zero"}))],
                             ("index-up", "names '../../../../dev/zero'", "not a file of the checkpoint directory")),
        "index_absolute": Bad([str(hostile_index(tiny, root / "index-abs", {"lm_head.weight": str(llama / "model.safetensors")}))],
                              ("index-abs", "model.safetensors.index.json names", "not a file of the checkpoint directory")),
        "index_not_a_map": Bad([str(hostile_index(tiny, root / "index-list", ["model.safetensors"]))],
                               ("index-list", "is not a safetensors index (its weight_map is not an object)")),
        "index_not_a_name": Bad([str(hostile_index(tiny, root / "index-number", {"a": 1, "b": "model.safetensors"}))],
                                ("index-number", "names 1, which is not a file of the checkpoint directory")),
        "device_shard": Bad([str(device_shard(tiny, root / "device"))], ("device", "model.safetensors is not a regular file")),
    }


@pytest.fixture(scope="module")
def trusted(tiny, tmp_path_factory) -> Path:
    """The remote-code checkpoint again, for a scan that trusts it."""
    return remote_code(tiny, tmp_path_factory.mktemp("trusted") / "custom")


@pytest.fixture(scope="module")
def runs(inputs, trusted, tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    """Every bad input, plus the pickle checkpoint with --allow-pickle, which must load, and the
    remote-code checkpoint with --trust-remote-code."""
    out = tmp_path_factory.mktemp("out")
    commands = {name: [*SCAN, *bad.args, "--json", str(out / f"{name}.json")] for name, bad in inputs.items()}
    pickle_dir = inputs["pickle_refused"].args[-1]
    commands["pickle_allowed"] = [*SCAN, "--allow-pickle", pickle_dir, "--json", str(out / "pickle_allowed.json")]
    commands["remote_code_trusted"] = [*SCAN, "--trust-remote-code", str(trusted), "--json", str(out / "remote_code_trusted.json")]
    commands["json_dir_missing"] = [*SCAN, inputs["empty_prompt"].args[-1], "--json", str(out / "no-such-dir" / "scan.json")]
    return run_many(commands, isolated_env(tmp_path_factory.mktemp("env"))), out


@pytest.mark.parametrize("name", [
    "missing_path", "unknown_repo", "no_config", "cut_gguf", "cut_gguf_vocabulary", "cut_safetensors", "pickle_refused",
    "pickle_unsafe", "remote_code", "empty_prompt", "unsupported", "unknown_type", "no_tokenizer", "gguf_no_tokenizer",
    "remote_tokenizer", "partial", "split_gguf", "split_gguf_part_missing", "big_endian_gguf", "index_outside", "index_absolute",
    "index_not_a_map", "index_not_a_name", "device_shard",
])
def test_bad_input_is_one_line_naming_the_input_and_the_fix(inputs, runs, name):
    results, out = runs
    line = one_line_error(results[name])
    assert all(part in line for part in inputs[name].says), line
    assert not list(out.glob(f"{name}.json*"))  # nothing half-written


def test_json_into_a_missing_directory_fails_before_scanning(runs):
    results, out = runs
    line = one_line_error(results["json_dir_missing"])
    assert "--json" in line and str(out / "no-such-dir") in line
    assert results["json_dir_missing"].stdout == ""  # a scan prints its tables to stdout: none ran


def test_pickle_checkpoint_loads_with_allow_pickle(tiny, runs):
    results, out = runs
    assert results["pickle_allowed"].returncode == 0, results["pickle_allowed"].stderr
    data = json.loads((out / "pickle_allowed.json").read_text())
    planted = tiny("llama")
    assert data["model"]["format"] == "pytorch"
    assert [(w["layer"], w["row"], w["col"]) for w in data["super_weights"]] == [(planted.layer, planted.row, planted.col)]


def test_allowed_pickle_is_still_loaded_with_weights_only(inputs, runs):
    """--allow-pickle must not run code: the pickle's os.mkdir is refused by weights_only=True."""
    results, _ = runs
    one_line_error(results["pickle_unsafe"])
    evil = Path(inputs["pickle_unsafe"].args[-1])
    assert not (evil.parent / "pwned").exists()


def test_remote_code_runs_only_when_trusted(inputs, runs, trusted):
    """Refused: the repo's Python never ran. Trusted: it ran, and its model (a Llama under a type of
    its own) scans, its down projections found by structure."""
    results, out = runs
    refused = Path(inputs["remote_code"].args[-1])
    assert "needs remote code" in one_line_error(results["remote_code"])
    assert not refused.with_suffix(".ran").exists()
    assert not Path(inputs["remote_tokenizer"].args[-1]).with_suffix(".ran").exists()
    assert results["remote_code_trusted"].returncode == 0, results["remote_code_trusted"].stderr
    assert trusted.with_suffix(".ran").exists()
    scanned = json.loads((out / "remote_code_trusted.json").read_text())
    assert scanned["model"]["model_type"] == "tiny_custom" and scanned["super_weights"]


@pytest.mark.parametrize("args,line", [
    (["scan", "x", "--spike-ratio", "nan"], "--spike-ratio: 'nan' is not a finite number."),
    (["scan", "x", "--confirm-ratio", "nan"], "--confirm-ratio: 'nan' is not a finite number."),
    (["scan", "x", "--control-max", "inf"], "--control-max: 'inf' is not a finite number."),
    (["scan", "x", "--spike-ratio", "0"], "--spike-ratio: 0.0 is not in the range x>0."),
    (["scan", "x", "--spike-min", "-1"], "--spike-min: -1.0 is not in the range x>=0."),
    (["scan", "x", "--eval-tokens", "0"], "--eval-tokens: 0 is not in the range x>=2."),
    (["scan", "x", "--seq-len", "1"], "--seq-len: 1 is not in the range x>=2."),
    (["scan", "x", "--max-iterations", "0"], "--max-iterations: 0 is not in the range x>=1."),
    (["scan", "x", "--quant-block", "0"], "--quant-block: 0 is not in the range x>=1."),
    (["scan", "x", "--max-gpu-memory", "lots"], "--max-gpu-memory: cannot read 'lots' as a size; write e.g. 4GiB or 500MB."),
    (["scan", "x", "--max-gpu-memory", "0GB"], "--max-gpu-memory: must be more than zero."),
    (["survey", "x", "--workers", "0"], "--workers: 0 is not in the range x>=1."),
    (["survey", "x", "--workers", "-2"], "--workers: -2 is not in the range x>=1."),
    (["survey", "x", "--timeout", "-5"], "--timeout: -5.0 is not in the range x>=0."),
    (["survey", "x", "--retries", "-1"], "--retries: -1 is not in the range x>=0."),
    (["survey", "x", "--prefetch", "-1"], "--prefetch: -1 is not in the range x>=0."),
    (["survey", "x", "--limit", "0"], "--limit: 0 is not in the range x>=1."),
    (["survey", "x", "--gpus-per-scan", "nan"], "--gpus-per-scan: 'nan' is not a finite number."),
    (["scan", "x", "--no-such-option"], "No such option '--no-such-option'; `superweights scan -h` lists the options."),
])
def test_a_bad_number_is_one_line_where_options_are_parsed(capsys, args, line):
    """Refused before anything loads, downloads or starts: the value is checked by its click type."""
    from catalog.cli import main

    assert main(args) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {line}\n")
