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
from catalog import probe as probing
from catalog.architectures import discover
from catalog.errors import NonFiniteError, UnsupportedArchitectureError
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
    check_sites(zoo.build(model_type), model_type)


@pytest.mark.parametrize("model_type", zoo.causal_lm_types())
def test_bfloat16_finds_the_sites_float32_finds(model_type, report):
    """bfloat16 is what a GPU scan computes in: every type that scans finds the same down
    projections in it. XLNet's post-norm feed-forward part once went unconfirmed there (its input
    shifted by one came back 0.006 apart, past the 1e-4 a float32 comparison allows), and its scan
    said "found no feed-forward output projection in any decoder block"."""
    if report[model_type].status != coverage.SCANS:
        pytest.skip(f"{model_type} {report[model_type].status}")
    model = zoo.build(model_type)
    sites = [(s.layer, s.param, s.layout) for s in discover(model, model.config, model_type).sites]
    model = model.to(torch.bfloat16)
    try:
        with torch.no_grad():
            model(input_ids=torch.arange(3, 10)[None], use_cache=False)
    except RuntimeError as exc:  # a module kept in float32 by its own config, which `.to` converts anyway (Inkling 2)
        pytest.skip(f"{model_type} does not run converted to bfloat16 after building: {str(exc)[:100]}")
    assert [(s.layer, s.param, s.layout) for s in discover(model, model.config, model_type).sites] == sites


def test_a_bias_added_after_the_experts_rows_is_not_taken_for_their_output():
    """JetMoE's MoE block adds a bias after the sum of its experts' rows (zero when built, not once
    trained): with the rows zeroed the block still outputs it, and the routing keeps it apart from
    the rows' sum. Its mixture of attention experts, of the same class, has no site."""
    model = _built("jetmoe")
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.bias.normal_()
    found = check_sites(model, "jetmoe")
    assert [site.param for site in found.sites] == [f"model.layers.{i}.mlp.output_linear.weight" for i in range(found.num_layers)]


def check_sites(model, model_type: str):
    """Every discovered site, checked by autograd on one forward pass of a 7-token prompt."""
    found = discover(model, model.config, model_type)
    assert found.sites and len(found.layers) + len(found.mixer_only) + len(found.unrun) == found.num_layers
    params = dict(model.named_parameters())
    assert all(params[site.param] is site.weight for site in found.sites)  # `param` is the state-dict name
    sites = [_untied(site) if site.param in found.sites.shared else site for site in found.sites]
    calls, routed = {}, {}  # each module's calls within its routing module's first (the capture calls both again)
    handles = [site.module.register_forward_hook(_calls_until(calls, i, routed), with_kwargs=True) for i, site in enumerate(sites)]
    handles += [site.routing.register_forward_hook(_first_call(routed, i), with_kwargs=True)
                for i, site in enumerate(sites) if site.routing is not None]
    ids = torch.randint(3, model.config.get_text_config().vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    with capture(sites) as captured:
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    assert sorted(captured) == list(range(len(sites)))  # the hook fired at every site
    for i, site in enumerate(sites):
        site_calls = calls[i] if site.routing is not None else calls[i][:1]
        output = site_calls[0][2]
        y = output.reshape(-1, output.shape[-1])
        if site.fused:
            y = routed_sum(site, site_calls, routed.get(i), transformed=model_type in TRANSFORMED)
        check_layout(site, captured[i], y)
        check_plan(model, site)
    return found


def _untied(site):
    """A shared weight's site with a copy of it for its own module: the gradient of this block's
    output then comes from this call alone, not also from the earlier blocks' calls."""
    site.module.weight = torch.nn.Parameter(site.weight.detach().clone())
    return dataclasses.replace(site, weight=site.module.weight)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _first_call(calls: dict, i: int):
    """A forward hook that keeps the (args, kwargs, output) of its module's first call as calls[i]."""
    def hook(module, args, kwargs, out):
        calls.setdefault(i, (args, kwargs, _first(out).clone()))
    return hook


def _calls_until(calls: dict, i: int, done: dict):
    """A forward hook that keeps its module's calls as calls[i], until `done` holds i."""
    def hook(module, args, kwargs, out):
        if i not in done:
            calls.setdefault(i, []).append((args, kwargs, _first(out).clone()))
    return hook


def routed_sum(site, calls: list, parent_call: tuple | None, transformed: bool) -> torch.Tensor:
    """The experts' down outputs weighted by the router, recomputed with autograd; it is the module's
    own output unless the module transforms its experts' outputs first (`TRANSFORMED`). Grouped and
    sliced experts return rows: their sum is their routing module's output (`parent_call`), less its
    offset."""
    output = calls[0][2]
    routing = experts.routing(site, *parent_call[:2], [out for *_, out in calls]) if site.routing is not None else None
    y = experts.recompute(site, calls, routing).total
    module_output = output.reshape(-1, output.shape[-1])
    if site.experts == "pre_routed":  # (E * tokens, hidden): each expert's rows, summed per token
        module_output = module_output.view(site.module.down_proj.shape[0], -1, module_output.shape[-1]).sum(0)
    if routing is not None:
        module_output = parent_call[2].reshape(-1, output.shape[-1]) - routing.offset
    assert torch.allclose(y, module_output.float(), rtol=1e-4, atol=1e-5) != transformed
    return y


def check_layout(site, cap, y: torch.Tensor) -> None:
    assert cap.out_max == pytest.approx(y.abs().max().item(), rel=1e-5)
    (grad,) = torch.autograd.grad(y[cap.token, cap.out_channel], site.weight, retain_graph=True)
    as_grad = dataclasses.replace(site, weight=grad)  # the same layout, over the gradient
    every = range(as_grad.by_expert.shape[0]) if site.fused else [None]
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
    module_path = site.param.removesuffix(".weight")  # fused experts behind the interface: the parameter itself
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


class Shifted(torch.nn.Module):
    """A projection of each token's input plus those of the `back` tokens before it (a token shift, a short convolution)."""

    def __init__(self, back: int) -> None:
        super().__init__()
        self.back, self.proj = back, torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(sum(torch.nn.functional.pad(x, (0, 0, k, -k)) for k in range(self.back + 1)))


@pytest.mark.parametrize("back", [0, 1, 2])
def test_a_module_looking_back_is_told_by_how_far(back):
    """The look-back a feed-forward part may have (RWKV's token shift, one token) passes; a short
    convolution over three tokens (LFM2's mixer) does not, nor does anything with look-back 0."""
    module = Shifted(back)
    with probing.recording([module]) as probe:
        module(torch.randn(1, probing.PROBE_TOKENS, 8))
    assert [probe.token_wise(module, look_back) for look_back in (0, 1)] == [back == 0, back <= 1]


def test_rwkv_channel_mix_is_found_past_its_token_shift_and_gate():
    """RWKV's feed-forward part (channel mix) blends each token's input with the previous token's,
    and its receptance gate, as wide as the hidden state, runs after the down projection (`value`)."""
    found = discover(model := _built("rwkv"), model.config, "rwkv")
    assert [site.param for site in found.sites] == [f"rwkv.blocks.{i}.feed_forward.value.weight" for i in range(found.num_layers)]


def test_blocks_sharing_one_feed_forward_weight_are_sites_of_their_layers():
    """Zamba2 calls its shared transformer block from several layers, each call through modules of
    its own that hold one weight: a site per layer, and the weight's lookups give the first."""
    found = discover(model := _built("zamba2"), model.config, "zamba2")
    first, second = found.sites
    assert first.weight is second.weight and first.module is not second.module and (first.layer, second.layer) == (2, 3)
    assert found.sites.shared == {first.param: [2, 3]} and found.sites.named(first.param) is first
    assert found.sites.holding(first.weight) is first and found.sites.distinct == [first]


def test_blocks_calling_one_feed_forward_module_are_refused_in_one_line(tiny):
    """One module object called from two layers: its hooks could not tell the calls apart."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama").path, dtype=torch.float32)
    model.model.layers[1].mlp = model.model.layers[0].mlp
    with pytest.raises(UnsupportedArchitectureError, match=r"layers 0 and 1 call one feed-forward module \(model\.layers\.0\.mlp"):
        discover(model, model.config, "llama")


def test_a_weight_holding_nan_is_named_not_blamed_on_the_architecture(tiny):
    """A NaN in the first block's weights (a corrupt file, a misread quantization type) makes every
    hidden state after it NaN, so no behavioural test can hold: the weight is named, not "found no
    feed-forward output projection"."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny("llama").path, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"a value of model\.layers\.0\.mlp\.up_proj\.weight is not a finite number"):
        discover(model, model.config, "llama")


def test_sizes_come_from_the_blocks_where_the_config_leaves_them_to_its_parts():
    """BLT's config names no hidden size or depth (only its sub-configs do): the record takes them
    from the discovered blocks and down projections."""
    from catalog.loading import in_memory

    model = _built("blt")
    info = in_memory(model, object(), "blt").info
    mlp = model.model.global_transformer.layers[0].mlp.down_proj
    assert (info.num_layers, info.hidden_size, info.intermediate_size) == (4, mlp.out_features, mlp.in_features)


def test_a_model_without_any_feed_forward_part_is_one_clear_error():
    model = _built("mamba")
    with pytest.raises(UnsupportedArchitectureError) as caught:
        discover(model, model.config, "state-spaces/mamba-130m")
    assert str(caught.value) == ("state-spaces/mamba-130m: cannot scan model type 'mamba': "
                                 "found no feed-forward output projection in any decoder block.")


def test_blocks_that_a_text_only_pass_skips_are_listed_apart():
    """Mllama's cross-attention layers (layer 3 of the tiny one) attend to an image: without one
    they do not run, and are neither scanned nor taken for blocks without a feed-forward part."""
    found = discover(model := _built("mllama"), model.config, "mllama")
    assert found.blocks == "model.layers" and found.layers == [0, 1, 2] and found.unrun == [3] and not found.mixer_only


@pytest.mark.parametrize("model_type,per_layer,mixer_only", [
    ("nemotron_h", None, True),   # hybrid: mamba, attention and MLP blocks in one list
    ("deepseek_v3", [1, 1, 1, 2], False),  # first_k_dense_replace dense layers, then routed + shared experts
    ("qwen2_moe", [2, 2, 2, 2], False),  # routed experts and a gated shared expert
    ("inkling_text", [2, 2, 2, 2], False),  # routed and shared experts, both fused, side by side
])
def test_layer_kinds_are_told_apart(model_type, per_layer, mixer_only):
    found = discover(model := _built(model_type), model.config, model_type)
    counts = [sum(1 for s in found.sites if s.layer == layer) for layer in range(found.num_layers)]
    if per_layer is not None:
        assert counts == per_layer
    assert bool(found.mixer_only) == mixer_only and all(counts[layer] == 0 for layer in found.mixer_only)
