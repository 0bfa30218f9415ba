"""Planted super weights in layouts that structure alone must handle, scanned as users scan (`tiny.LAYOUTS`).

gpt-oss: fused experts stored `[E, in, out]`, gate and up interleaved, clamped at 7, with biases;
DeepSeek-V3: routed and shared experts after a dense first layer, sigmoid router; Gemma 3: the
multimodal wrapper (a vision tower of as many layers, which a text prompt does not run);
Nemotron-H: mamba, attention, MLP and MoE blocks in one list; Phi-2: fc1/fc2 with biases; JetMoE:
experts of its own class called on the routed rows sorted by expert, beside attention experts alike;
DBRX: experts stacked in one 2-D weight, called once per expert with a slice of it; RWKV: a
channel mix with a token shift and a receptance gate after the down projection (`value`).
Each carries a super weight whose zeroing multiplies perplexity on the Zipf text and an inert
spike that must stay a candidate. What the scan records is checked against the outside
description of `tiny.KIND` and against the model itself: a plain forward hook on the module
holding the weight, and autograd through it (not `catalog.hooks` or `catalog.experts`).
"""

from __future__ import annotations

import pytest
import torch

from catalog.config import DEFAULT_PROMPT, ScanOptions, VerifyOptions
from catalog.result import CONFIRMED, REJECTED, ScanResult, SuperWeight
from catalog.scanner import scan

from tiny import HYBRID, KIND, LAYOUTS, Plant, Planted

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WITHOUT_MLP = {"nemotron_h": [i for i, block in enumerate(HYBRID) if block in "M*"]}  # mamba and attention blocks
# Experts called on the routed rows sorted by expert, inside an MoE block: its router, which returns
# (the sorted order, each row's token, each row's gate, rows per expert, logits).
ROW_ROUTERS = {"jetmoe": "router"}
# Experts called once per expert with a slice of their stacked weight: measured at the experts module
# around them, called with (hidden states, each token's experts, their weights) as fused experts are.
PER_EXPERT_CALLS = {"dbrx"}


@pytest.fixture(scope="module", params=LAYOUTS)
def scanned(request, tiny, zipf_text) -> tuple[Planted, ScanResult]:
    planted = tiny(request.param, effect=True, inert=True)
    return planted, scan(str(planted.path), ScanOptions(device="cpu", dtype="float32", eval_text=zipf_text,
                                                     eval_tokens=512, seq_len=64))  # as the model it is checked against


def coordinates(weight: Plant | SuperWeight) -> tuple:
    return weight.layer, weight.param, weight.expert, weight.row, weight.col, tuple(weight.tensor_index)


def test_finds_the_plants_and_nothing_else_at_their_coordinates_orientation_and_expert(scanned):
    planted, result = scanned
    assert sorted(map(coordinates, result.super_weights)) == sorted(map(coordinates, (planted.inert, planted)))
    assert result.summary["blocks"] == KIND[planted.kind].block.removesuffix(".{}")  # Gemma 3: not the vision tower's
    assert result.summary["mixer_only_layers"] == WITHOUT_MLP.get(planted.kind, [])


def test_confirms_the_super_weight_and_nothing_else(scanned):
    planted, result = scanned
    verdicts = {coordinates(w): (w.verdict, w.ppl_ratio) for w in result.super_weights}
    verdict, ratio = verdicts[coordinates(planted)]
    assert verdict == CONFIRMED and ratio > 2 * VerifyOptions.confirm_ratio
    verdict, ratio = verdicts[coordinates(planted.inert)]
    assert verdict == REJECTED and ratio == pytest.approx(1, abs=0.02)


def test_records_what_the_module_computes(scanned):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    planted, result = scanned
    model = AutoModelForCausalLM.from_pretrained(planted.path, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(planted.path)(DEFAULT_PROMPT, return_tensors="pt").input_ids
    for weight in result.super_weights:
        x, y = (measure_rows(model, ids, weight, ROW_ROUTERS[planted.kind]) if planted.kind in ROW_ROUTERS
                else measure(model, ids, weight, 2 if planted.kind in PER_EXPERT_CALLS else 1))
        assert weight.input_activation == pytest.approx(x, rel=1e-4)
        assert weight.output_activation == pytest.approx(y, rel=1e-4)
        assert model.get_parameter(weight.param)[tuple(weight.tensor_index)].item() == weight.value
        assert weight.share == pytest.approx(1, abs=0.01)  # the planted weight makes the spike: the router's weight is right


def measure(model, ids: torch.Tensor, weight: SuperWeight, up: int = 1) -> tuple[float, float]:
    """x[col] and y[row] at the spike's token, from a forward hook on the module holding the weight
    (or `up` - 1 modules above it).

    The gradient of y[row] with respect to the stored tensor at `tensor_index` is x[col], times
    the router's weight for the expert where the module is fused experts (called with the hidden
    states, each token's experts and their weights): so the index must address W[row, col].
    """
    module = model.get_submodule(weight.param.rsplit(".", up)[0])  # drop ".weight" (fused experts: ".down_proj")
    seen = {}
    handle = module.register_forward_hook(lambda mod, args, out: seen.update(args=args, out=out))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    y = seen["out"].reshape(-1, seen["out"].shape[-1])[weight.token, weight.row]
    (grad,) = torch.autograd.grad(y, model.get_parameter(weight.param))
    gain = 1.0
    if weight.expert is not None:
        _, experts, weights = seen["args"]  # (tokens, top_k) each
        gain = weights[weight.token][experts[weight.token] == weight.expert].item()
    return grad[tuple(weight.tensor_index)].item() / gain, y.item()


def measure_rows(model, ids: torch.Tensor, weight: SuperWeight, router: str) -> tuple[float, float]:
    """`measure` where the experts return rows: y[row] is the MoE block's output at the token (its
    bias is zero), and the gain that of the token's row among the expert's rows."""
    experts = weight.param.rsplit(".", 1)[0]
    block = experts.rsplit(".", 1)[0]
    seen = {}
    hooks = [model.get_submodule(block).register_forward_hook(lambda mod, args, out: seen.update(out=out)),
             model.get_submodule(f"{block}.{router}").register_forward_hook(lambda mod, args, out: seen.update(routed=out))]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    y = seen["out"].reshape(-1, seen["out"].shape[-1])[weight.token, weight.row]
    (grad,) = torch.autograd.grad(y, model.get_parameter(weight.param))
    _, tokens, gates, sizes, _ = seen["routed"]
    first = sum(sizes[: weight.expert])
    row = first + int((tokens[first: first + sizes[weight.expert]] == weight.token).nonzero()[0, 0])
    return grad[tuple(weight.tensor_index)].item() / gates[row].item(), y.item()


def test_quant_check_on_fused_experts_stored_in_out(tiny, zipf_text):
    """gpt-oss keeps each expert's down projection as `[in, out]`: round-to-nearest must run along
    the input channels of W[out, in] (the stored tensor's first axis), keep the planted scalar at its
    `tensor_index`, and leave every weight as it was; clipping without holding it out ruins it."""
    from catalog.loading import load
    from catalog.quantization import quantized, rtn
    from catalog.sources import resolve

    planted = tiny("gpt_oss", effect=True)
    loaded = load(resolve(str(planted.path)), device="cpu")
    site = next(s for s in loaded.architecture.sites if s.param == planted.param)
    assert site.layout == "experts_in_out"
    stored = site.weight.detach().clone()
    with quantized([site], 4, 32, clip_quantile=0.01, keep=[(site.weight, tuple(planted.tensor_index))]):
        assert site.weight[tuple(planted.tensor_index)].item() == planted.value
        expected = rtn(stored[planted.expert].T, 4, 32, clip_quantile=0.01).T  # W[out, in] quantized by rows
        held = torch.ones_like(expected, dtype=torch.bool)
        held[tuple(planted.tensor_index)[1:]] = False
        assert torch.equal(site.weight[planted.expert][held], expected[held])
    assert torch.equal(site.weight, stored)

    checks = VerifyOptions(quant_check=True, quant_block=32, clip_quantile=0.01)
    result = scan(str(planted.path), ScanOptions(device="cpu", eval_text=zipf_text, eval_tokens=512, seq_len=64, checks=checks))
    rows = {a.name: a for a in result.ablations}
    assert rows["int4 RTN block 32 + clip"].ratio > 3 * rows["int4 RTN block 32 + clip + keep SW"].ratio
