"""Every causal-LM type of the installed transformers, as a tiny random model built from its config.

`superweights architectures` scans each one (`catalog.coverage`), and so do the tests.

The default config of each type is shrunk to a few layers of 64-wide blocks: every size the
config names (under any of the spellings configs use) is lowered, the config is built again
from those values so that what it derives (layer types, head counts) follows, and sub-configs
(a multimodal model's text and vision configs) are shrunk the same way. A type whose default
config cannot be shrunk or built raises transformers' own error from `build`: that is
transformers' matter, not the scanner's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

HIDDEN = 64
LAYERS = 4
# config attribute -> tiny value; widths are distinct so that no two can be confused by a shape
SIZES = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "word_embed_proj_dim", "embed_dim", "dim"), HIDDEN),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "decoder_ffn_dim", "encoder_ffn_dim", "ffn_hidden_size",
                     "dense_intermediate_size", "mlp_dim", "d_ff", "inner_hidden_size"), 160),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size", "moe_ffn_hidden_size"), 96),
    **dict.fromkeys(("shared_expert_intermediate_size", "shared_intermediate_size"), 112),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "encoder_layers", "n_layers"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "decoder_attention_heads", "encoder_attention_heads", "n_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"), 2),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k", "moe_k"), 2),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 128),
    **dict.fromkeys(("n_group", "topk_group", "mamba_n_groups", "n_groups"), 1),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "mamba_d_head", "mamba_d_state", "state_size"), 16),
    "kv_lora_rank": 32, "q_lora_rank": 48, "mamba_n_heads": 8, "mamba_expand": 2,
    "head_dim": 16, "rotary_dim": 16, "vocab_size": 256,
}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id", "mask_token_id")


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _shrunk(values: dict, layers: int) -> dict:
    """The config's values with every named size lowered (never raised) and lists of one entry per
    layer cut to the new depth."""
    old_layers = next((values[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(values.get(k), int)), None)
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and "model_type" in value:
            out[key] = _shrunk(value, layers)
        elif value is None and (key == "num_experts_per_tok" or key == "head_dim" and "qk_rope_head_dim" not in values):
            out[key] = SIZES[key]  # defaults left to be derived, which some configs then never derive
        elif key in SIZES and isinstance(value, int) and not isinstance(value, bool):
            tiny = layers if SIZES[key] == LAYERS else SIZES[key]
            out[key] = min(value, tiny) if value > 0 else value
        elif isinstance(value, list) and old_layers and len(value) == old_layers and old_layers != layers:
            out[key] = value[:layers]
        elif key in TOKEN_IDS and isinstance(value, int) and value >= SIZES["vocab_size"]:
            out[key] = TOKEN_IDS.index(key) % 3
        elif key == "per_layer_config" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if int(k) < layers}
        else:
            out[key] = value
    if values.get("num_key_value_heads") and values.get("num_key_value_heads") == values.get("num_attention_heads"):
        out["num_key_value_heads"] = out["num_attention_heads"]  # MLA and plain multi-head attention keep them equal
    out.pop("qk_head_dim", None)  # derived from the rope and nope dims
    if "mamba_d_ssm" in out:  # the state-space width is heads times head size
        out["mamba_d_ssm"] = out["mamba_n_heads"] * out["mamba_d_head"]
    return out


def tiny_configs(model_type: str, layers: int = LAYERS, **overrides) -> Iterator:
    """The shrunk config, then the same without head_dim (configs that derive it from MLA's rope
    and nope dims need their own)."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type).to_dict()
    values = {k: v for k, v in _shrunk(default, layers).items() if k not in ("transformers_version", "architectures", "model_type")}
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
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
            with torch.no_grad():
                model(input_ids=torch.arange(3, 10).unsqueeze(0) % config.get_text_config().vocab_size, use_cache=False)
            return model
        except Exception as exc:  # transformers raises many types for a config it cannot run
            errors.append(exc)
    raise errors[0]
