"""`superweights apply-restore`: a restore file's scalars written into a copy of a (de)quantized
checkpoint, and shown to work: a planted model quantized on disk (int4 RTN with clipping of its
down projections), then restored, has the perplexity that `--quant-check`'s "keep SW" row
predicts, within that row's interval.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from catalog.config import ScanOptions, VerifyOptions
from catalog.keeplist import keep_list
from catalog.perplexity import paired_interval
from db.reads import CatalogReader
from db.repository import Catalog

from db_samples import times

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BLOCK, CLIP = 32, 0.01


@pytest.fixture(scope="module")
def demo(tiny, zipf_text, tmp_path_factory):
    """The planted Llama scanned with --quant-check into a catalog, and its restore file (every candidate)."""
    from catalog.scanner import scan

    planted = tiny("llama", effect=True)
    options = ScanOptions(device="cpu", eval_text=zipf_text, eval_tokens=512, seq_len=64,
                          checks=VerifyOptions(quant_check=True, quant_block=BLOCK, clip_quantile=CLIP))
    url = f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.db'}"
    Catalog(url).save(scan(str(planted.path), options), **times())
    result = CatalogReader(url).latest(str(planted.path)).result
    restore = tmp_path_factory.mktemp("restore") / "restore.json"
    restore.write_text(keep_list(result, "restore", "all").text)
    return planted, options, result, restore


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "not a file" for p in sorted(directory.iterdir())}


def test_restored_quantized_copy_has_the_perplexity_keep_sw_predicts(superweights, demo, tmp_path):
    from catalog.checkpoints import evaluate_checkpoints, quantize_copy

    planted, options, result, restore = demo
    quantize_copy(planted.path, tmp_path / "int4", 4, BLOCK, CLIP)
    status, _, err = superweights("apply-restore", str(restore), str(tmp_path / "int4"), "--out", str(tmp_path / "int4-restored"))
    assert status == 0 and err == f"wrote 1 full-precision scalars into {tmp_path / 'int4-restored'}\n"
    base, quantized, restored = evaluate_checkpoints([planted.path, tmp_path / "int4", tmp_path / "int4-restored"], options)
    rows = {a.name: a for a in result.ablations}
    predicted, unkept = rows[f"int4 RTN block {BLOCK} + clip + keep SW"], rows[f"int4 RTN block {BLOCK} + clip"]
    measured, broken = paired_interval(restored, base).ratio, paired_interval(quantized, base).ratio
    assert predicted.ratio_low <= measured <= predicted.ratio_high
    assert unkept.ratio_low <= broken <= unkept.ratio_high
    assert broken > 3 * measured  # the planted super weight clipped away ruins it; written back, it is rescued


def test_only_the_scalars_bytes_change_and_the_input_stays(superweights, demo, tmp_path):
    planted, _, result, restore = demo
    checkpoint = tmp_path / "zeroed"
    shutil.copytree(planted.path, checkpoint)
    tensors = load_file(checkpoint / "model.safetensors")
    tensors[planted.param][planted.tensor_index] = 0.0  # what clipping did to it
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    before = digest(checkpoint)
    status, _, err = superweights("apply-restore", str(restore), str(checkpoint), "--out", str(tmp_path / "out"))
    assert status == 0, err
    assert digest(checkpoint) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "zeroed"]
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert written[planted.param][planted.tensor_index].item() == result.super_weights[0].value
    written[planted.param][planted.tensor_index] = 0.0
    assert all(torch.equal(written[name], tensors[name]) for name in tensors) and written.keys() == tensors.keys()
    assert {n for n, h in digest(tmp_path / "out").items() if h != before[n]} == {"model.safetensors"}


@pytest.mark.parametrize("value", [1.00390625, 1.01, -8.0, 3.0e38])
def test_a_bfloat16_checkpoint_gets_the_value_rounded_as_torch_rounds_it(superweights, demo, tmp_path, value):
    planted, *_ = demo
    checkpoint = tmp_path / "bf16"
    shutil.copytree(planted.path, checkpoint)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(checkpoint / "model.safetensors").items()}
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    restore = tmp_path / "restore.json"
    scalar = {"param": planted.param, "tensor_shape": list(tensors[planted.param].shape), "tensor_index": list(planted.tensor_index),
              "value": value}
    restore.write_text(json.dumps({"format": "superweights-restore", "version": 1, "scalars": [scalar]}))
    assert superweights("apply-restore", str(restore), str(checkpoint), "--out", str(tmp_path / "out"))[0] == 0
    written = load_file(tmp_path / "out" / "model.safetensors")[planted.param][planted.tensor_index]
    assert written.dtype == torch.bfloat16 and torch.equal(written, torch.tensor(value).to(torch.bfloat16))


def _edited(restore: Path, tmp_path: Path, **changes) -> Path:
    document = json.loads(restore.read_text())
    document["scalars"][0].update(changes)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))
    return edited


def _packed(planted, tmp_path: Path) -> Path:
    """The checkpoint with the super weight's tensor stored as int8 (a quantizer's packed output)."""
    checkpoint = tmp_path / "packed"
    shutil.copytree(planted.path, checkpoint)
    tensors = load_file(checkpoint / "model.safetensors")
    tensors[planted.param] = tensors[planted.param].to(torch.int8)
    save_file(tensors, checkpoint / "model.safetensors")
    return checkpoint


@pytest.mark.parametrize("case,expected", [
    ("another model", "has no tensor model.layers.1.mlp.down_proj.weight; is it a checkpoint of the model the restore file is of?"),
    ("another shape", "tensor model.layers.1.mlp.down_proj.weight is [64, 160], the restore file's is [160, 64]"),
    ("outside the shape", "model.layers.1.mlp.down_proj.weight: index [70, 1] lies outside its shape [64, 160]."),
    ("packed", "tensor model.layers.1.mlp.down_proj.weight is stored as I8 (packed, not dequantized)"),
    ("truncated", "not a readable safetensors file (model.safetensors: tensor "),
    ("not a restore file", "not a superweights-restore file of version 1"),
    ("a device in it", "notes.txt is not a regular file (a device, a pipe or a broken link)"),
    ("out is not empty", "exists and is not an empty directory; give a new one."),
    ("out inside the input", "overlaps the checkpoint"),
])
def test_refusals_are_one_line_and_write_nothing(superweights, demo, tiny, tmp_path, case, expected):
    planted, _, _, restore = demo
    checkpoint, out = planted.path, tmp_path / "out"
    if case == "another model":
        checkpoint = tiny("gpt2").path
    elif case == "another shape":
        restore = _edited(restore, tmp_path, tensor_shape=[160, 64], tensor_index=[1, 1])
    elif case == "outside the shape":
        restore = _edited(restore, tmp_path, tensor_index=[70, 1])
    elif case == "packed":
        checkpoint = _packed(planted, tmp_path)
    elif case == "truncated":  # a scalar past the end would grow the copy instead of landing in its tensor
        checkpoint = tmp_path / "truncated"
        shutil.copytree(planted.path, checkpoint)
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "not a restore file":
        restore = tmp_path / "config.json"
        shutil.copyfile(planted.path / "config.json", restore)
    elif case == "a device in it":  # the copy would read /dev/zero without end
        checkpoint = tmp_path / "device"
        shutil.copytree(planted.path, checkpoint)
        (checkpoint / "notes.txt").symlink_to("/dev/zero")
    elif case == "out is not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out inside the input":
        checkpoint = tmp_path / "copy"
        shutil.copytree(planted.path, checkpoint)
        out = checkpoint / "restored"
    before, around = digest(checkpoint), sorted(p.name for p in tmp_path.iterdir())
    status, stdout, err = superweights("apply-restore", str(restore), str(checkpoint), "--out", str(out))
    assert (status, stdout) == (1, "") and err.count("\n") == 1 and expected in err, err
    assert digest(checkpoint) == before and sorted(p.name for p in tmp_path.iterdir()) == around
    assert case == "out is not empty" or not out.exists()
