"""Discovery by structure, on every causal-LM type of the installed transformers (`zoo`).

The stored layout is checked by autograd, not by re-stating it: the gradient of the spike output
y[token, row] with respect to the down projection's weight is non-zero only in W[row, :], and
there equals (router weight times) the input x that the capture hook recorded. So `out_row`,
`index` and the hook's (for fused experts: recomputed) inputs must all match what the module
computes. Where the config's tensor-parallel plan names a discovered projection, it must call
it what a feed-forward output is: `rowwise` (`colwise` for experts stored `[E, in, out]`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

import pytest
import torch

from catalog import coverage, experts, zoo
from catalog.architectures import discover
from catalog.errors import UnsupportedArchitectureError
from catalog.hooks import capture

# Found, but not yet addressed exactly, in the transformers versions named: tracked here so that
# a fix (ours or transformers') shows as an unexpected pass.
KNOWN_GAPS = {
    "deepseek_v4": ("", "its experts scale the router weights inside: the recorded gain is off by that factor"),
    "longcat_flash": ("<5.25", "its experts module runs the zero-computation (identity) experts too"),
}
# Experts modules whose output is not the router-weighted sum of their down projections' outputs:
# their spikes are looked for in that sum (`catalog.experts.recompute`), which is checked here.
TRANSFORMED = {"ergo": "each expert's output goes through its own RMSNorm before the weighted sum"}
README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def report() -> dict[str, coverage.TypeCoverage]:
    """`superweights architectures` over every causal-LM type, once."""
    return {c.model_type: c for c in coverage.coverage()}


def _built(model_type: str) -> torch.nn.Module:
    try:
        return zoo.build(model_type)
    except Exception as exc:  # transformers' own limits on shrunk default configs
        pytest.skip(f"transformers cannot build a tiny {model_type}: {type(exc).__name__}: {str(exc)[:120]}")


def test_the_readme_lists_what_the_architectures_command_reports(report):
    """The README's block is `superweights architectures --markdown` of the installed transformers."""
    import transformers

    text = README.read_text()
    block = text[text.index("<!-- architectures -->\n") + len("<!-- architectures -->\n"): text.index("<!-- /architectures -->")]
    if not block.startswith(f"transformers {transformers.__version__}:"):
        pytest.skip(f"the README's list is for another transformers than {transformers.__version__}: "
                    "regenerate it with `superweights architectures --markdown`")
    assert block == coverage.markdown(list(report.values()))


def test_at_least_nine_in_ten_types_that_build_scan(report):
    built = [c for c in report.values() if c.status != coverage.NO_BUILD]
    assert sum(c.status == coverage.SCANS for c in built) >= 0.9 * len(built)
    named = ["deepseek_v2", "deepseek_v3", "gpt_oss", "llama4", "llama4_text", "gemma3", "smollm3", "granite",
             "granitemoehybrid", "olmo3", "olmoe", "phi", "cohere", "cohere2", "glm4", "glm4_moe", "starcoder2",
             "gpt_bigcode", "qwen3_next", "falcon_h1", "lfm2", "exaone", "exaone4", "ministral", "stablelm"]
    assert [t for t in named if report[t].status != coverage.SCANS] == []  # the list


def _swept(model_type: str):
    """The type as a test parameter, marked as an expected failure where it is a known gap of this
    transformers version."""
    import transformers
    from packaging.specifiers import SpecifierSet

    versions, reason = KNOWN_GAPS.get(model_type, (None, None))
    if reason and transformers.__version__ in SpecifierSet(versions):
        return pytest.param(model_type, marks=pytest.mark.xfail(reason=reason, strict=True))
    return model_type


@pytest.mark.parametrize("model_type", [_swept(t) for t in zoo.causal_lm_types()])
def test_discovered_sites_address_the_weight_that_produced_the_output(model_type, report):
    if report[model_type].status != coverage.SCANS:
        pytest.skip(f"{model_type} {report[model_type].status}: {report[model_type].reason}")
    model = zoo.build(model_type)
    found = discover(model, model.config, model_type)
    assert found.sites and len(found.layers) + len(found.mixer_only) == found.num_layers
    params = dict(model.named_parameters())
    assert all(params[site.param] is site.weight for site in found.sites)  # `param` is the state-dict name
    outputs = {}
    handles = [site.module.register_forward_hook(lambda m, a, kw, out, i=i: outputs.__setitem__(i, (_first(out).clone(), a, kw)),
                                                 with_kwargs=True)
               for i, site in enumerate(found.sites)]
    ids = torch.randint(3, model.config.get_text_config().vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    with capture(found.sites) as captured:
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    assert sorted(captured) == list(range(len(found.sites)))  # the hook fired at every site
    for i, site in enumerate(found.sites):
        output, args, kwargs = outputs[i]
        y = output.reshape(-1, output.shape[-1])
        if site.fused:
            y = routed_sum(site, args, kwargs, output, transformed=model_type in TRANSFORMED)
        check_layout(site, captured[i], y)
        check_plan(model, site)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def routed_sum(site, args, kwargs, output: torch.Tensor, transformed: bool) -> torch.Tensor:
    """The experts' down outputs weighted by the router, recomputed with autograd; it is the module's
    own output unless the module transforms its experts' outputs first (`TRANSFORMED`)."""
    y = experts.recompute(site, args, kwargs, output).total
    module_output = output.reshape(-1, output.shape[-1])
    if site.experts == "pre_routed":  # (E * tokens, hidden): each expert's rows, summed per token
        module_output = module_output.view(site.module.down_proj.shape[0], -1, module_output.shape[-1]).sum(0)
    assert torch.allclose(y, module_output.float(), rtol=1e-4, atol=1e-5) != transformed
    return y


def check_layout(site, cap, y: torch.Tensor) -> None:
    assert cap.out_max == pytest.approx(y.abs().max().item(), rel=1e-5)
    (grad,) = torch.autograd.grad(y[cap.token, cap.out_channel], site.weight, retain_graph=True)
    as_grad = dataclasses.replace(site, weight=grad)  # the same layout, over the gradient
    every = range(grad.shape[0]) if site.fused else [None]
    in_row = sum(as_grad.out_row(cap.out_channel, e).abs().sum() for e in every)
    assert in_row > 0 and in_row == pytest.approx(grad.abs().sum().item(), rel=1e-5)  # only W[row, :] feeds y[row]
    expected = as_grad.out_row(cap.out_channel, cap.expert)  # = router weight * x, over input channels
    assert torch.allclose(cap.gain * cap.x, expected, rtol=1e-3, atol=1e-6)
    row, col = cap.out_channel, int(cap.x.abs().argmax())
    index = site.index(row, col, cap.expert)
    assert site.weight[index] == site.out_row(row, cap.expert)[col]
    assert grad[index] == pytest.approx(cap.gain * cap.x[col].item(), rel=1e-3, abs=1e-7)


def check_plan(model, site) -> None:
    """The tensor-parallel plan, where it names this projection, agrees on its orientation."""
    plan = getattr(model.config.get_text_config(), "base_model_tp_plan", None) or {}
    module_path = site.param.rsplit(".", 1)[0] if not site.fused else site.param
    styles = {style for pattern, style in plan.items() if fnmatch.fnmatch(module_path, f"*{pattern.replace('*', '[0-9]*')}")}
    styles -= {"moe_tp_experts", "ep_router", "replicated_with_grad_allreduce"}
    if styles:
        assert styles <= ({"colwise"} if site.layout == "experts_in_out" else {"rowwise", "local_rowwise", "rowwise_split_input"}), styles


def test_attention_is_told_apart_where_every_token_carries_a_massive_activation(tiny):
    """The planted sink dominates every token's normed hidden state, so all tokens look alike:
    attention then gives the last token alone what it gave it in the prompt, and only a call with
    the other tokens changed shows that it mixes them (it found o_proj in 7 of 8 layers)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama", effect=True, inert=True).path, dtype=torch.float32)
    found = discover(model, model.config, "llama")
    assert [site.param for site in found.sites] == [f"model.layers.{i}.mlp.down_proj.weight" for i in range(8)]


def test_a_model_without_any_feed_forward_part_is_one_clear_error():
    model = _built("mamba")
    with pytest.raises(UnsupportedArchitectureError) as caught:
        discover(model, model.config, "state-spaces/mamba-130m")
    assert str(caught.value) == ("state-spaces/mamba-130m: cannot scan model type 'mamba': "
                                 "found no feed-forward output projection in any decoder block.")


@pytest.mark.parametrize("model_type,per_layer,mixer_only", [
    ("nemotron_h", None, True),   # hybrid: mamba, attention and MLP blocks in one list
    ("deepseek_v3", [1, 1, 1, 2], False),  # first_k_dense_replace dense layers, then routed + shared experts
    ("qwen2_moe", [2, 2, 2, 2], False),  # routed experts and a gated shared expert
])
def test_layer_kinds_are_told_apart(model_type, per_layer, mixer_only):
    found = discover(model := _built(model_type), model.config, model_type)
    counts = [sum(1 for s in found.sites if s.layer == layer) for layer in range(found.num_layers)]
    if per_layer is not None:
        assert counts == per_layer
    assert bool(found.mixer_only) == mixer_only and all(counts[layer] == 0 for layer in found.mixer_only)
