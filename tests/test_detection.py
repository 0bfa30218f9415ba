"""Detection on tiny checkpoints with planted super weights (see `tiny.py` for how they are planted).

Each test checks the scanner against what was planted *and* against quantities measured here
independently of `catalog.hooks`: plain forward hooks, and the output with the weight zeroed.
"""

from __future__ import annotations

import json

import pytest
import torch

from catalog.config import DEFAULT_PROMPT, ScanOptions, SpikeRule
from catalog.detection import detect
from catalog.hooks import capture, zeroed
from catalog.loading import load
from catalog.result import ScanResult
from catalog.scanner import scan
from catalog.sources import resolve

from tiny import KINDS, NUM_LAYERS, Planted

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def scan_tiny(planted: Planted, **options) -> ScanResult:
    return scan(str(planted.path), ScanOptions(device="cpu", verify=False, **options))


@pytest.fixture(scope="module", params=KINDS)
def scanned(request, tiny) -> tuple[Planted, ScanResult]:
    planted = tiny(request.param)
    return planted, scan_tiny(planted, dtype="float32")  # the dtype of the independent measurements


def measure(planted: Planted, zero: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of the planted down projection module over the default prompt, via plain hooks.

    For fused experts the input is the router-independent hidden state, so only the output is used.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(planted.path, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(planted.path)(DEFAULT_PROMPT, return_tensors="pt").input_ids
    module_name = planted.param.rsplit(".", 1)[0]  # drop ".weight" (fused experts: ".down_proj")
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0].reshape(-1, args[0].shape[-1]), output.reshape(-1, output.shape[-1])

    weight = model.state_dict()[planted.param]
    with torch.no_grad():
        if zero:
            weight[planted.tensor_index] = 0.0
        handle = model.get_submodule(module_name).register_forward_hook(hook)
        model(input_ids=ids)
        handle.remove()
    return seen["x"], seen["y"]


def test_finds_the_planted_weight_at_its_coordinates_and_orientation(scanned):
    planted, result = scanned
    (found,) = result.super_weights
    assert (found.layer, found.param, found.expert, found.row, found.col) == (
        planted.layer, planted.param, planted.expert, planted.row, planted.col)
    assert tuple(found.tensor_index) == planted.tensor_index  # GPT-2 Conv1D: [col, row]
    assert found.value == planted.value and found.iteration == 1 and found.token == 0


def test_tensor_index_addresses_the_weight_as_transformers_holds_it(scanned):
    """`param` and `tensor_index` name the loaded model's tensor; for GPT-2 that is not [row, col]."""
    from transformers import AutoModelForCausalLM

    planted, result = scanned
    (found,) = result.super_weights
    stored = AutoModelForCausalLM.from_pretrained(planted.path).state_dict()[found.param]
    assert stored[tuple(found.tensor_index)].item() == found.value
    if planted.kind == "gpt2":
        assert stored.shape == (160, 64) and found.tensor_index == [found.col, found.row]
        assert stored[found.row, found.col].item() != found.value


def test_fused_expert_weight_is_one_experts_w2_in_the_checkpoint_file(tiny):
    """transformers fuses Mixtral's experts on load; the file keeps `experts.{e}.w2` as [out, in]."""
    from safetensors.torch import load_file

    planted = tiny("mixtral")
    (found,) = scan_tiny(planted).super_weights
    stored = load_file(planted.path / "model.safetensors")
    w2 = stored[f"model.layers.{found.layer}.block_sparse_moe.experts.{found.expert}.w2.weight"]
    assert w2[found.row, found.col].item() == found.value
    others = [stored[f"model.layers.{found.layer}.block_sparse_moe.experts.{e}.w2.weight"][found.row, found.col] for e in (0, 2, 3)]
    assert all(abs(v.item()) < 1 for v in others)


def test_only_the_planted_layer_spikes_and_every_layer_is_reported(scanned):
    planted, result = scanned
    assert [row.layer for row in result.layers] == list(range(NUM_LAYERS))
    assert [row.layer for row in result.layers if row.spike] == [planted.layer]
    spike = result.layers[planted.layer]
    assert (spike.out_channel, spike.in_channel, spike.token) == (planted.row, planted.col, 0)
    quiet = max(row.out_max for row in result.layers if not row.spike)
    assert spike.out_max > 100 * quiet


def test_activations_and_share_agree_with_an_independent_measurement(scanned):
    """share = W*x/y is the part of y[row] this one weight makes: 1 - y(weight zeroed) / y."""
    planted, result = scanned
    (found,) = result.super_weights
    x, y = measure(planted)
    _, y_zeroed = measure(planted, zero=True)
    y_row, y_row_zeroed = y[found.token, found.row].item(), y_zeroed[found.token, found.row].item()
    assert found.output_activation == pytest.approx(y_row, rel=1e-4)
    assert found.share == pytest.approx(1 - y_row_zeroed / y_row, abs=1e-3)
    assert result.layers[planted.layer].out_max == pytest.approx(abs(y_row), rel=1e-4)
    if planted.expert is None:
        assert found.input_activation == pytest.approx(x[found.token, found.col].item(), rel=1e-4)
        assert found.share == pytest.approx(found.value * x[0, found.col].item() / y_row, rel=1e-4)


def test_scan_json_round_trips_with_the_schema_fields(scanned, tmp_path):
    _, result = scanned
    path = tmp_path / "scan.json"
    result.to_json(path)
    data = json.loads(path.read_text())
    assert data["schema"] == 2
    assert {"schema", "model", "config", "layers", "super_weights", "ablations", "timings"} <= data.keys()
    assert {"row", "col", "tensor_index", "expert", "iteration", "verdict", "ppl_ratio"} <= data["super_weights"][0].keys()
    assert {w["verdict"] for w in data["super_weights"]} == {"untested"}  # detection only: no causal check ran
    assert ScanResult.from_json(path) == result


def test_spike_rule_thresholds_are_recorded_and_decide(tiny):
    """A layer spikes when out_max >= ratio * median layer and >= min_abs; the config says which rule ran."""
    planted = tiny("llama")
    result = scan_tiny(planted)
    assert (result.config["spike_ratio"], result.config["spike_min_abs"]) == (50.0, 0.0)
    measured = result.layers[planted.layer].out_max / result.summary["reference_out_max"]
    assert len(scan_tiny(planted, rule=SpikeRule(ratio=measured * 0.99)).super_weights) == 1
    assert scan_tiny(planted, rule=SpikeRule(ratio=measured * 1.01)).super_weights == []
    assert scan_tiny(planted, rule=SpikeRule(min_abs=result.layers[planted.layer].out_max * 1.01)).super_weights == []


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_iteration_finds_the_super_weight_hidden_behind_the_first(tiny, kind):
    """The second planted weight's spike is shut while the first super activation exists."""
    planted = tiny(kind, masked=True)
    result = scan_tiny(planted)
    found = [(w.layer, w.expert, w.row, w.col, w.iteration) for w in result.super_weights]
    first, second = planted, planted.masked
    assert found == [(first.layer, first.expert, first.row, first.col, 1), (second.layer, second.expert, second.row, second.col, 2)]
    assert [row.layer for row in result.layers if row.spike] == [first.layer]  # the baseline pass
    assert result.summary["detection_passes"] == 3  # the third pass found nothing new
    once = scan_tiny(planted, max_iterations=1)
    assert [(w.layer, w.iteration) for w in once.super_weights] == [(first.layer, 1)]
    assert once.summary["detection_passes"] == 1


def test_several_spikes_in_one_pass(tiny):
    """A weaker spike in an earlier layer is a candidate too, found in the same first pass."""
    planted = tiny("gpt2", effect=True, inert=True)
    result = scan_tiny(planted, max_iterations=1)
    assert [(w.layer, w.row, w.col, w.iteration) for w in result.super_weights] == [
        (planted.inert.layer, planted.inert.row, planted.inert.col, 1), (planted.layer, planted.row, planted.col, 1)]


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_weights_are_restored_bit_for_bit_and_hooks_removed(tiny):
    planted = tiny("mixtral", masked=True)
    loaded = load(resolve(str(planted.path)), device="cpu")
    before = state_copy(loaded.model)
    sites = loaded.architecture.sites
    prompt = loaded.tokenizer(DEFAULT_PROMPT, return_tensors="pt").input_ids
    found = detect(loaded.model, [prompt], sites, SpikeRule(), max_iterations=3)
    assert [w.iteration for w in found.super_weights] == [1, 2]  # so weights were zeroed on the way
    after = loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not site.module._forward_hooks for site in sites)


def test_bfloat16_scan_finds_the_same_weight(tiny):
    planted = tiny("gpt2")
    (found,) = scan_tiny(planted, dtype="bfloat16").super_weights
    assert (found.layer, found.row, found.col, tuple(found.tensor_index), found.value) == (
        planted.layer, planted.row, planted.col, planted.tensor_index, planted.value)


def test_capture_hooks_come_off_when_the_forward_pass_fails(tiny):
    loaded = load(resolve(str(tiny("llama").path)), device="cpu")
    sites = loaded.architecture.sites
    with pytest.raises(IndexError), capture(sites):
        loaded.model(input_ids=torch.tensor([[10_000]]))  # an id past the vocabulary
    assert all(not site.module._forward_hooks for site in sites)


def test_zeroed_restores_even_when_the_body_fails():
    weight = torch.randn(4, 6)
    original = weight.clone()
    with pytest.raises(RuntimeError), zeroed([(weight, (1, 2)), (weight, (3, 0))]):
        assert weight[1, 2] == 0 and weight[3, 0] == 0
        raise RuntimeError("a forward pass failed")
    assert torch.equal(weight, original)
