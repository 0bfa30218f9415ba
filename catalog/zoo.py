"""Every causal-LM type of the installed transformers, as a tiny random model built from its config.

`superweights architectures` scans each one (`catalog.coverage`), and so do the tests.

The default config of each type is shrunk to a few layers of 64-wide blocks: every size the
config names (under any of the spellings configs use, one per layer in a list too) is lowered,
never raised; group counts are lowered to 1, which divides any expert count, and top-k to 2,
below the 4 experts. Sub-configs (a multimodal model's text and vision configs, a model's parts'
configs such as an attention config without a model type of its own) are shrunk the same way.

The depth is cut by kind of layer (a layer's kind: its entry in every list of one entry per
layer): every kind is kept, two of each that repeats; lists of layer indices and per-layer
overrides name the kept layers anew, kv-sharing counts keep their share of the depth, and a stack
in parts (layer counts that add up to the depth) keeps two layers a part.

Numbers follow the numbers they depend on: those the default config derived itself are dropped,
so that the shrunk config derives them again, and those it was given are set by `RELATIONS` where
the default holds the relation (key-value heads as many as query heads, a head's width MLA's nope
and rope dims). Values the default config leaves None although its modeling code computes with
them (real checkpoints name them) get tiny ones (`UNSET`; expert counts only where the config
gives experts a width, as elsewhere None means no experts): key-value heads as many as the query
heads, layer types full attention on every layer, rope parameters kept per layer type a default
entry for each type, and a part's config the model's rope_theta where it names none.

`build` gives the parameters transformers' init leaves all zero small seeded random values, as
training would: a zero weight leaves what follows it no input to scan. A type whose default
config cannot be shrunk or built raises transformers' own error from `build`: that is
transformers' matter, not the scanner's.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch

HIDDEN = 64
LAYERS = 4
DEPTHS = ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "encoder_layers", "n_layers")
EXPERT_WIDTHS = ("moe_intermediate_size", "expert_intermediate_size", "moe_ffn_hidden_size")
EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k", "moe_k")
# config attribute -> tiny value; widths are distinct so that no two can be confused by a shape
SIZES = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "word_embed_proj_dim", "embed_dim", "dim", "emb_dim",
                     "hidden_size_global", "adapter_out_dim"), HIDDEN),  # the last two: the width of the model they feed
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "encoder_ffn_dim", "ffn_hidden_size",
                     "dense_intermediate_size", "mlp_dim", "d_ff", "inner_hidden_size", "dim_ff"), 160),
    **dict.fromkeys(EXPERT_WIDTHS, 96),
    **dict.fromkeys(("shared_expert_intermediate_size", "shared_experts_intermediate_size", "shared_intermediate_size"), 112),
    **dict.fromkeys(DEPTHS, LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "decoder_attention_heads", "encoder_attention_heads", "n_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"), 2),
    **dict.fromkeys(EXPERTS, 4),
    **dict.fromkeys(TOP_K, 2),  # not above the expert count
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 128),
    **dict.fromkeys(("n_group", "num_expert_group", "topk_group", "mamba_n_groups", "n_groups"), 1),  # divides any count
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "mamba_d_head", "mamba_d_state", "state_size"), 16),
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input", "encoder_hash_byte_group_vocab"), 256),
    "kv_lora_rank": 32, "q_lora_rank": 48, "mamba_n_heads": 8, "mamba_expand": 2,
    "head_dim": 16, "rotary_dim": 16, "hidden_size_per_layer_input": 24,
}
# Sizes that some default configs leave None although their modeling code computes with them (checkpoints name
# them); the expert ones only where the config gives experts a width (elsewhere None means no experts).
UNSET = {"indexer_n_heads": 4, "indexer_kv_heads": 1, "indexer_head_dim": 16,  # an indexer's keys: one head for all queries
         "indexer_budget": 8, "indexer_compress_ratio": 4, "clip_qkv": 8.0}  # a bound random weights stay far within
UNSET_EXPERTS = {**{k: SIZES[k] for k in EXPERTS + TOP_K}, "n_shared_experts": 1, "num_shared_experts": 1}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id", "mask_token_id")
# Sizes that depend on others: each follows its inputs' shrunk values where the default holds the
# relation (target, inputs, how), in this order.
RELATIONS = (
    ("num_key_value_heads", ("num_attention_heads",), lambda heads: heads),  # MLA and plain multi-head attention
    *((adapter, ("hidden_size",), lambda width: width) for adapter in ("adapter_in_dim", "adapter_input_size")),
    ("mamba_d_ssm", ("mamba_n_heads", "mamba_d_head"), operator.mul),  # the state-space width is heads times head size
    ("num_heads", ("hidden_size", "expand", "head_dim"), lambda h, e, d: h * e // d),  # heads fill the expanded width
    ("head_dim", ("qk_nope_head_dim", "qk_rope_head_dim"), operator.add),  # a head is MLA's nope and rope parts
    ("index_num_heads", ("num_attention_heads", "num_key_value_heads"), operator.floordiv),  # the queries of one key head
)
KV_SHARED = ("num_kv_shared_layers",)  # the last layers of the stack, which read earlier layers' keys and values
STACK_PART = 2  # layers kept in each part of a stack in parts (counts of layers that add up to the depth)
LAYER_LISTS = ("_layers", "_layer_ids")  # how the names of lists of layer indices end


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return _int(value) or isinstance(value, float)


def _sized(key: str, value, depth: int):
    """A size lowered to its tiny value (never raised); zero and negative values mean something else."""
    if isinstance(value, list):
        return [_sized(key, v, depth) for v in value]  # one size per layer
    if not _int(value) or value <= 0:
        return value
    return min(value, depth if key in DEPTHS else SIZES[key])


@dataclass
class _Stack:
    """How a config's stack of layers is cut: its depth before and after, the layers kept (old indices),
    the lists with one entry per layer, and the layer counts that add up to the depth (its parts)."""

    old: int | None
    depth: int
    keep: list[int]
    per_layer: list[str]
    parts: list[str]


def _stack(values: dict, layers: int) -> _Stack:
    """The stack cut to `layers`, or to two layers a part where its parts add up to the depth."""
    old = next((values[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if _int(values.get(k))), None)
    parts = [k for k, v in values.items() if k.endswith("_layers") and k not in DEPTHS + KV_SHARED and _int(v) and v > 0]
    parts = parts if len(parts) > 1 and sum(values[k] for k in parts) == old else []  # input, middle and output layers
    depth = min(old or layers, sum(min(values[k], STACK_PART) for k in parts) if parts else layers)
    per_layer = [k for k, v in values.items() if old and isinstance(v, list) and len(v) == old]
    kinds = [repr(kind) for kind in zip(*(values[k] for k in per_layer))]  # a layer's kind: its entry in every list
    return _Stack(old, depth, _kept_layers(kinds, depth) if per_layer else list(range(depth)), per_layer, parts)


def _kept_layers(kinds: list, layers: int) -> list[int]:
    """The first layer of each kind the stack has, then a second of each, then the first of the others,
    in stack order: every kind of layer is built, and each kind that repeats keeps two, since layers of a
    kind may share weights (transformers' tied-weight patterns name a first one and expect others)."""
    seen: Counter = Counter()
    ranked = []
    for index, kind in enumerate(kinds):
        ranked.append((min(seen[kind], 2), index))
        seen[kind] += 1
    return sorted(index for _, index in sorted(ranked)[:layers])


def _layer_indices(key: str, value, depth: int | None) -> bool:
    """A list of layer indices (which layers have a feature), not one entry per layer."""
    return (depth is not None and key.endswith(LAYER_LISTS) and isinstance(value, list) and len(value) != depth
            and all(_int(v) and 0 <= v < depth for v in value))


def _cut(key: str, value: list, keep: list[int]) -> list:
    """A list with one entry per layer, at the kept layers; where its entries are layer indices (each
    layer's source, at most its own index) they name their layer anew, or their own where it is cut."""
    kept = [value[i] for i in keep]
    if key.endswith(LAYER_LISTS) and all(_int(v) and v <= i for i, v in enumerate(value)):
        return [keep.index(v) if v in keep else new for new, v in enumerate(kept)]
    return kept


def _shared(count: int, stack: _Stack) -> int:
    """The kv-sharing layers' share of the new depth: none, all, or some and not all."""
    if count <= 0 or count >= stack.old:
        return min(count, stack.depth)
    return min(stack.depth - 1, max(1, round(count * stack.depth / stack.old)))


def _shrunk(values: dict, layers: int) -> dict:
    """The config's values with every named size lowered (never raised), the layers cut to the new
    depth and the sizes that depend on others following them."""
    stack = _stack(values, layers)
    out = _related(values, {key: _shrunk_value(key, value, values, stack, layers) for key, value in values.items()})
    if isinstance(values.get("per_layer_config"), dict):
        out["per_layer_config"] = _per_layer_overrides(values, out, stack)
    out.pop("qk_head_dim", None)  # derived from the rope and nope dims
    return out


def _shrunk_value(key: str, value, values: dict, stack: _Stack, layers: int):
    """One value of the config, shrunk by its name, its kind (a sub-config, a list per layer) or its role."""
    if isinstance(value, dict) and "model_type" in value:
        return _shrunk(value, layers)
    if value is None:
        return _unset(key, values, stack.depth)
    if key in stack.per_layer:
        return _sized(key, _cut(key, value, stack.keep), stack.depth) if key in SIZES else _cut(key, value, stack.keep)
    if key in SIZES:
        return _sized(key, value, stack.depth)
    if _layer_indices(key, value, stack.old):
        return [stack.keep.index(v) for v in value if v in stack.keep]
    if key in stack.parts:
        return min(value, STACK_PART)
    if key in KV_SHARED and _int(value) and stack.old:
        return _shared(value, stack)
    if key in TOKEN_IDS and _int(value) and value >= SIZES["vocab_size"]:
        return TOKEN_IDS.index(key) % 3
    return value


def _unset(key: str, values: dict, depth: int) -> int | float | list | None:
    """What a value that the default config leaves None stands for where its modeling code computes
    with it; None where None means derived or absent."""
    if key == "head_dim":
        return None if "qk_rope_head_dim" in values else SIZES[key]  # MLA derives it from its rope and nope dims
    if key == "num_key_value_heads" and _int(values.get("num_attention_heads")):
        return _sized("num_attention_heads", values["num_attention_heads"], depth)  # no grouping: one per query head
    if key == "layer_types":
        return ["full_attention"] * depth  # one entry per layer, of the one type every config knows
    if key in UNSET_EXPERTS:
        return UNSET_EXPERTS[key] if any(values.get(k) for k in EXPERT_WIDTHS) else None
    return UNSET.get(key)


def _related(default: dict, out: dict) -> dict:
    """The shrunk values with each that depends on others following them: the sizes of `RELATIONS` where
    the default holds the relation, and the rope settings a part or a layer type reads."""
    out = dict(out)
    for target, inputs, how in RELATIONS:
        if all(_int(default.get(k)) and _int(out.get(k)) for k in (target, *inputs)):
            if default[target] == how(*(default[k] for k in inputs)):
                out[target] = how(*(out[k] for k in inputs))
    theta = (default.get("rope_parameters") or {}).get("rope_theta")
    for key, value in out.items():  # a part's config (no model type of its own) where modeling code reads rope_theta
        if theta and isinstance(value, dict) and value.get("model_type") == "" and "rope_theta" not in value:
            out[key] = {**value, "rope_theta": theta}
    if out.get("rope_parameters") == {} and out.get("layer_types"):  # rope kept per layer type, and none given
        out["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": 10000.0} for t in dict.fromkeys(out["layer_types"])}
    return out


def _per_layer_overrides(values: dict, out: dict, stack: _Stack) -> dict:
    """Per-layer overrides (layer index -> values) at the kept layers, shrunk like the config, with each
    layer's dependent sizes following its own (overridden) inputs."""
    overrides = {}
    for index, override in values["per_layer_config"].items():
        if int(index) in stack.keep:
            sized = {k: _sized(k, v, stack.depth) if k in SIZES else v for k, v in override.items()}
            tiny = _related({**values, **override}, {**out, **sized})
            overrides[str(stack.keep.index(int(index)))] = {k: v for k, v in tiny.items() if k in override or v != out.get(k)}
    return overrides


def _underived(values: dict, default: dict, config) -> dict:
    """The shrunk values without the numbers that the default config derived itself (attributes that
    are not fields of its class, fields declared None, where the default holds a number), so that the
    shrunk config derives them again from the shrunk sizes instead of keeping the full-size ones."""
    from transformers import PreTrainedConfig

    declared = {f.name: f.default for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else None
    out = {}
    for key, value in values.items():
        sub = config.__dict__.get(key)
        if isinstance(value, dict) and isinstance(sub, PreTrainedConfig):
            out[key] = _underived(value, default[key], sub)
        elif declared is None or key in SIZES or not _number(default.get(key)) or declared.get(key) is not None:
            out[key] = value  # given, shrunk by name, or filled where the default left it None
    return out


def tiny_configs(model_type: str, layers: int = LAYERS, **overrides) -> Iterator:
    """The shrunk config, then the same without head_dim (configs that derive it from MLA's rope
    and nope dims need their own)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    default = config.to_dict()
    values = {k: v for k, v in _underived(_shrunk(default, layers), default, config).items()
              if k not in ("transformers_version", "architectures", "model_type")}
    for attempt in (values, _without_head_dim(values)):
        yield lambda attempt=attempt: AutoConfig.for_model(model_type, **{**attempt, **overrides})


def _without_head_dim(values: dict) -> dict:
    return {k: _without_head_dim(v) if isinstance(v, dict) else v for k, v in values.items() if k != "head_dim"}


def build(model_type: str, layers: int = LAYERS, seed: int = 0, **overrides) -> torch.nn.Module:
    """The tiny model in float32, eval mode, which runs a forward pass; raises the last error of
    transformers for the first config where none gives one."""
    from transformers import AutoModelForCausalLM

    errors: list[Exception] = []
    for make in tiny_configs(model_type, layers, **overrides):
        torch.manual_seed(seed)
        try:
            config = make()
            model = _unzeroed(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), seed)
            with torch.no_grad():
                model(input_ids=torch.arange(3, 10).unsqueeze(0) % config.get_text_config().vocab_size, use_cache=False)
            return model
        except Exception as exc:  # transformers raises many types for a config it cannot run
            errors.append(exc)
    raise errors[0]


def _unzeroed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model with each parameter that transformers' init leaves all zero (a gate or scale that
    training moves off zero) given small seeded random values: a zero weight gives what it feeds no
    input at any layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model
