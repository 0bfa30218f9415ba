"""Every adapter in the registry, on a 2-layer, 64-wide model built from its config class.

The stored layout is checked by autograd, not by re-stating it: the gradient of the spike output
y[token, row] with respect to the down projection's weight is non-zero only in W[row, :], and
there equals (router weight times) the input x that the capture hook recorded. So `out_row`,
`index` and the hook's (for fused experts: recomputed) inputs must all match what the module computes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from catalog.architectures import ADAPTERS, adapter_for, down_projections, supported_model_types
from catalog.errors import UnsupportedArchitectureError
from catalog.hooks import capture

HIDDEN, LAYERS = 64, 2
COMMON = dict(
    vocab_size=128, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, intermediate_size=160, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96, decoder_sparse_step=1)
# What each config class calls its sizes, where it differs from COMMON (BLOOM and Falcon: 4x MLP;
# None: the class derives it and takes no argument).
CONFIGS = {
    "falcon": dict(head_dim=None),
    "gpt2": dict(n_inner=160),
    "opt": dict(ffn_dim=160, word_embed_proj_dim=HIDDEN),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(MOE, shared_expert_intermediate_size=112, mlp_only_layers=[]),
    "qwen3_moe": dict(MOE, mlp_only_layers=[]),
}
SITES_PER_LAYER = {"qwen2_moe": [2, 2]}
MODEL_TYPES = [t for adapter in ADAPTERS for t in adapter.model_types]
# MoE models whose first layer is dense (`mlp_only_layers`), as some Qwen-MoE checkpoints are
MIXED = {
    "qwen2_moe-dense-0": ("qwen2_moe", dict(mlp_only_layers=[0]), [1, 2]),
    "qwen3_moe-dense-0": ("qwen3_moe", dict(mlp_only_layers=[0]), [1, 1]),
}
CASES = {t: (t, {}, SITES_PER_LAYER.get(t, [1] * LAYERS)) for t in MODEL_TYPES} | MIXED


def tiny_model(model_type: str, **overrides) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    sizes = {k: v for k, v in {**COMMON, **CONFIGS.get(model_type, {}), **overrides}.items() if v is not None}
    config = AutoConfig.for_model(model_type, **sizes)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def test_the_registry_covers_the_issue_s_architectures():
    assert set(MODEL_TYPES) >= {
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2",
        "gpt2", "gpt_neox", "falcon", "opt", "bloom", "mixtral", "qwen2_moe", "qwen3_moe"}
    assert len(MODEL_TYPES) == len(set(MODEL_TYPES))  # each model type registered once


@pytest.mark.parametrize("case", CASES)
def test_adapter_finds_down_projections_and_their_layout(case):
    model_type, overrides, per_layer = CASES[case]
    model = tiny_model(model_type, **overrides)
    adapter = adapter_for(model_type, "test")
    sites = down_projections(model, adapter, HIDDEN)
    assert [site.layer for site in sites] == [layer for layer, n in enumerate(per_layer) for _ in range(n)]
    params = dict(model.named_parameters())
    assert all(params[site.param] is site.weight for site in sites)  # `param` is the state-dict name

    outputs = {}
    def keep(i: int, output) -> None:  # a copy: Falcon adds the attention output in place afterwards
        outputs[i] = (output[0] if isinstance(output, tuple) else output).clone()

    handles = [site.module.register_forward_hook(lambda m, a, out, i=i: keep(i, out)) for i, site in enumerate(sites)]
    ids = torch.randint(3, 128, (1, 7))
    with capture(sites) as captured:
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    assert sorted(captured) == list(range(len(sites)))  # the hook fired at every site
    for i, site in enumerate(sites):
        check_layout(site, captured[i], outputs[i])


def check_layout(site, cap, output: torch.Tensor) -> None:
    y = output.reshape(-1, HIDDEN)  # (tokens, hidden)
    assert cap.out_max == pytest.approx(y.abs().max().item())
    (grad,) = torch.autograd.grad(y[cap.token, cap.out_channel], site.weight)
    as_grad = dataclasses.replace(site, weight=grad)  # the same layout, over the gradient
    experts = range(grad.shape[0]) if site.layout == "experts" else [None]
    in_row = sum(as_grad.out_row(cap.out_channel, e).abs().sum() for e in experts)
    assert in_row > 0 and in_row == pytest.approx(grad.abs().sum().item())  # only W[row, :] feeds y[row]
    expected = as_grad.out_row(cap.out_channel, cap.expert)  # = router weight * x, over input channels
    assert torch.allclose(cap.gain * cap.x, expected, rtol=1e-4, atol=1e-6)
    row, col = cap.out_channel, int(cap.x.abs().argmax())
    index = site.index(row, col, cap.expert)
    assert site.weight[index] == site.out_row(row, cap.expert)[col]
    assert grad[index] == pytest.approx(cap.gain * cap.x[col].item(), rel=1e-4)


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as caught:
        adapter_for("mamba", "state-spaces/mamba-130m")
    message = str(caught.value)
    assert "state-spaces/mamba-130m" in message and "'mamba'" in message
    assert all(model_type in message for model_type in supported_model_types())
