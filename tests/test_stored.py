"""A super weight's `value` is its checkpoint's, whatever dtype the scan computed in (`catalog.stored`).

Keep lists and restore files carry the value back into quantized copies: a bfloat16 scan of float32
weights must not hand them bfloat16's rounding. Each checkpoint here holds its planted weight at a
value bfloat16 cannot represent, so the model in bfloat16 holds another.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_gguf_load import fast, write_gguf

from catalog import ScanOptions, scan
from catalog.loading import LoadedModel, gguf_file
from catalog.result import SuperWeight
from catalog.sources import resolve
from catalog.stored import from_gguf

OFF_GRID = 1.0013  # times the planted value: between two bfloat16 numbers


def off_grid_copy(planted, tmp_path: Path) -> tuple[Path, float]:
    """The planted checkpoint with its super weight moved off bfloat16's grid, and that value as stored."""
    path = tmp_path / planted.kind
    shutil.copytree(planted.path, path)
    for file in path.glob("*.safetensors"):
        tensors = load_file(file)
        if planted.param in tensors:
            tensors[planted.param][planted.tensor_index] *= OFF_GRID
            save_file(tensors, file, metadata={"format": "pt"})
            return path, tensors[planted.param][planted.tensor_index].item()
    raise AssertionError(f"{planted.param} is in no shard")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # nn.Linear, Conv1D (stored transposed)
def test_a_bfloat16_scan_records_the_value_the_checkpoint_stores(tiny, tmp_path, kind):
    planted = tiny(kind)
    path, stored = off_grid_copy(planted, tmp_path)
    result = scan(str(path), ScanOptions(device="cpu", dtype="bfloat16", verify=False))
    assert (result.model.dtype, result.summary["loader"]) == ("bfloat16", "parallel")
    (found,) = [w for w in result.super_weights if tuple(w.tensor_index) == planted.tensor_index]
    assert found.value == stored != torch.tensor(stored).bfloat16().item()
    assert found.share == pytest.approx(1, abs=0.05)  # the rest of the record is the model's, as it computed


def test_a_value_the_model_changes_in_place_is_recorded_as_stored(tiny, tmp_path):
    """RWKV, run for inference, divides block k's value weights by 2 ** (k // rescale_every): at 1,
    the planted weight of layer 1 is held halved (its share of the spike, computed by the model, stays 1)."""
    import json

    planted = tiny("rwkv", effect=True)
    path = tmp_path / "rwkv"
    shutil.copytree(planted.path, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"rescale_every": 1}))
    result = scan(str(path), ScanOptions(device="cpu", dtype="float32", verify=False))
    (found,) = [w for w in result.super_weights if tuple(w.tensor_index) == planted.tensor_index]
    assert (found.layer, found.value) == (1, planted.value)
    assert found.share == pytest.approx(1, abs=0.05)


def test_a_gguf_value_is_its_dequantization(tmp_path):
    """A GGUF's full-precision value is its dequantization in float32, which the bfloat16 model rounds."""
    path = write_gguf(tmp_path / "llama.gguf", "llama")
    rounded, exact = fast(path, torch.bfloat16), fast(path, torch.float32)
    param = "model.layers.1.mlp.down_proj.weight"
    shape = list(rounded.get_parameter(param).shape)
    weights = [SuperWeight(1, param, None, row, col, [row, col], rounded.get_parameter(param)[row, col].item(), 0.0, 0.0, 1,
                           tensor_shape=shape) for row, col in [(3, 5), (60, 127)]]
    source = resolve(str(path))  # a load as far as from_gguf looks: the bfloat16 model and the file it parsed
    loaded = LoadedModel(rounded, None, None, None, torch.device("cpu"), 0.0, "gguf", gguf_file(source))
    values = from_gguf(source, loaded, weights)
    assert values == {i: exact.get_parameter(param)[w.row, w.col].item() for i, w in enumerate(weights)}
    assert [values[i] for i in range(2)] != [w.value for w in weights]
