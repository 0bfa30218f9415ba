"""Tiny checkpoints with planted super weights, built the way real super weights arise.

Yu et al. 2024 (Sec. 3): a super activation appears where a large residual-stream component is
read by an MLP's up (and gate) projection, so that the down projection's input x[col] is huge,
and a large down-projection weight W[row, col] turns it into a huge output y[row]. Each builder
here plants exactly that chain in a randomly initialised (seeded) model from a transformers config:

1. the token embedding gets a large component `SOURCE` in a residual dimension `source`
   (only for [BOS], the first token, as in real models; or for every token, see `effect`);
2. the chosen layer's MLP reads it: the up (and gate) rows of input channel `col` get weight
   `READ` on `source` (and nothing else), so after the pre-MLP norm x[col] becomes ~50-70;
3. the down projection's W[row, col] = `VALUE` (-8) turns that into y[row] ~ -430 to -560,
   against ~0.1-0.6 in the other layers (see `ACTIVITY`, `SINK`). For MoE kinds the chain is
   planted in one expert and the router is set to send the tokens carrying `source` there
   (DeepSeek's first `dense_layers` have a plain MLP: a plant there has no expert).

What zeroing the weight does downstream (what the causal checks rely on):

- `effect=True`: the source is in every token's embedding, so the super activation is at every
  token, in residual dimension `row`. The final norm scales the residual to RMS 1, so row `row`
  then dominates the final hidden state (~ -sqrt(hidden)); the (untied) lm_head column `row` is
  set to the log unigram probabilities of `write_zipf_text`'s Zipf text divided by that value.
  With the super weight the logits are the text's log unigram distribution; zeroed, the final
  state is dominated by `source`, which the lm_head ignores, and the logits are near uniform:
  perplexity on the Zipf text goes from exp(entropy) (~29) to ~vocab size (~250), a ratio ~8.
- `effect=False`: the spike is at token 0 only and the lm_head column `row` is zero: zeroing
  the weight changes the perplexity by well under 1%.
- `inert=True` adds a second, weaker spike (~ -50 to -90) at token 0 in layer 0, in a row the
  lm_head ignores: a candidate that a causal check must not confirm (zeroing it: ratio ~1.000).
- `masked=True` adds a super weight in layer 2 whose gate (GPT-2, NeoX: up) row also reads
  `row`, against its sign: while the first super activation is there, that MLP channel is shut;
  zeroing the first one exposes the second spike (the paper's iteration: `iteration` 2).

Builders state the parameter names and index layouts themselves (GPT-2's Conv1D stores
`[in, out]`; fused experts `[expert, out, in]`, gpt-oss's `[expert, in, out]` with gate and up
interleaved), independently of `catalog.architectures`, so the tests check the scanner against
an outside description. `LAYOUTS` adds layouts that structure alone must handle: a fused `[E, in, out]` MoE
(gpt-oss), an MoE with shared experts and dense first layers (DeepSeek-V3), a multimodal wrapper
(Gemma 3: embeddings scaled by sqrt(hidden), the MLP output normed before the residual add), a
hybrid whose mamba and attention blocks have no MLP (Nemotron-H), Phi-2's fc1/fc2, JetMoE's
experts, called on the routed rows sorted by expert (beside a mixture of attention experts alike),
DBRX's, stacked `[E * in, out]` in one 2-D weight and called once per expert with a slice of it,
and RWKV's channel mix (each token's input blended with the previous token's, ReLU squared, a
sigmoid gate computed after the down projection).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HIDDEN = 64
INTERMEDIATE = 160  # differs from HIDDEN so that a transposed index cannot pass by accident
NUM_LAYERS = 8  # the spike rule compares to the median layer: keep spiking layers a minority
EXPERTS = 4
SPECIALS = ["[UNK]", "[BOS]", "[EOS]"]
WORDS = [c1 + v1 + c2 + v2 for c1 in "bdgklmnprst" for v1 in "aeiou" for c2 in "bdgklmnprst" for v2 in "aeiou"][:253]
VOCAB = SPECIALS + WORDS  # 256 ids; [BOS] = 1
BOS = 1
ZIPF_EXPONENT = 1.3
POSITIONS = 2048

# Random init (std 0.02) leaves MLP inputs at ~0.01, far quieter than a trained model's ~1; then
# every weight on the spike's input channel would spike too. Scaling the MLP input weights by
# ACTIVITY gives x ~ 1 at ordinary channels, x[col] ~ 50-70 at the planted one, y[row] ~ 500 and
# ordinary outputs ~ 0.1-0.6: the planted layer is ~1000x the median layer (SmolLM2: ~700x),
# while W[r, col] * x[col] of an ordinary weight stays under the spike rule's 50x.
ACTIVITY = 6.0
SOURCE = 100.0  # residual component in the embedding
# up/gate weight on the source dimension: x[col] ~ 50 (gpt-oss clamps gate and up at 7: x[col] = 8 * 7)
READ = {"gated": 1.4, "linear": 10.0, "relu2": 1.25}
MASK = 4.0  # times READ: how strongly a masked plant's gate reads (against) the first super activation
ROUTE = 4.0  # router weight on the source dimension (MoE kinds): the expert gets ~all the weight
VALUE = -8.0  # the planted W[row, col]
INERT_VALUE = -2.0  # a weaker spike (~ -50 to -90) that must not mask the super weight's source
SUPER, MASKED, INERT = (1, 17, 23), (2, 33, 71), (0, 45, 101)  # (layer, row, col) of each plant
SOURCES = {"super": 5, "masked": 9, "inert": 13}  # residual dimension each plant's MLP reads
SINK = 3  # residual dimension every token carries at SOURCE (see `_add_sink`)
EXPERT_OF = {"super": 1, "masked": 2, "inert": 3}  # the expert each plant goes to in an MoE layer
HYBRID = "---M*-E*"  # Nemotron-H's layers: MLP "-" (the plants' layers 0-2), mamba "M", attention "*", MoE "E"
KINDS = ("llama", "gpt2", "gpt_neox", "mixtral")
LAYOUTS = ("gpt_oss", "deepseek_v3", "gemma3", "nemotron_h", "phi", "jetmoe", "dbrx", "rwkv")  # scanned in test_layouts.py


@dataclass(frozen=True)
class Plant:
    """One planted W[row, col] (paper convention: output, input channel), in the scan JSON's terms."""

    layer: int
    param: str  # state-dict name of the down projection
    expert: int | None
    row: int
    col: int
    tensor_index: tuple[int, ...]  # index into the stored tensor
    value: float
    token: int | None  # prompt position of its spike: 0, or None for every token


@dataclass(frozen=True)
class Planted(Plant):
    """A tiny checkpoint and the super weight planted in it (plus optional extra plants)."""

    kind: str = ""
    path: Path = Path()
    effect: bool = False  # zeroing the super weight multiplies perplexity on the Zipf text
    masked: Plant | None = None  # spikes only once the super weight is zeroed
    inert: Plant | None = None  # a spike at token 0 whose zeroing changes nothing downstream


@dataclass(frozen=True)
class Kind:
    """Where one architecture keeps what a plant touches; `block` is formatted with the layer."""

    config: Callable[[int], object]  # num_layers -> transformers config
    embed: str
    lm_head: str
    block: str
    reads: Callable[[str, int, int | slice, int | None], list[tuple[str, tuple]]]  # MLP input weights
    down: Callable[[str, int, int, int | None], tuple[str, tuple[int, ...]]]  # (param, index)
    activation: str  # "gated" (SiLU(gate) * up), "linear" (GELU(up)) or "relu2" (ReLU(up)^2)
    mlp_in: tuple[str, ...]  # names (ends of) of the MLP input weights, scaled by ACTIVITY
    router: str | None = None
    dense_layers: int = 0  # first layers with a plain MLP in an MoE model (DeepSeek's first_k_dense_replace)
    embed_scale: float = 1.0  # the model multiplies the embedding by this (Gemma: sqrt(hidden))
    post_norm: str | None = None  # a norm of the MLP output before the residual add (Gemma), in the block
    norm_offset: float = 0.0  # norms scale by (norm_offset + weight) (Gemma: 1)
    around: Callable[[dict, str, int, str], None] | None = None  # (state, block prefix, row, source name): what else a plant sets
    linear_std: float | None = None  # projections redrawn at this std, where the model's own init is far larger


def _gated_reads(prefix: str, col: int, dim: int | slice, expert: int | None) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.mlp.gate_proj.weight", (col, dim)), (f"{prefix}.mlp.up_proj.weight", (col, dim))]


def _expert_reads(prefix: str, col: int, dim: int | slice, expert: int | None,
                  tensor: str = "mlp.experts.gate_up_proj") -> list[tuple[str, tuple]]:
    # gate_up_proj (JetMoE: input_linear.weight): (experts, 2 * intermediate, hidden); gate rows first, then up rows
    name = f"{prefix}.{tensor}"
    return [(name, (expert, col, dim)), (name, (expert, INTERMEDIATE + col, dim))]


def _interleaved_reads(prefix: str, col: int, dim: int | slice, expert: int | None) -> list[tuple[str, tuple]]:
    # gpt-oss gate_up_proj: (experts, hidden, 2 * intermediate); gate at even columns, up at odd
    name = f"{prefix}.mlp.experts.gate_up_proj"
    return [(name, (expert, dim, 2 * col)), (name, (expert, dim, 2 * col + 1))]


def _moe_reads(prefix: str, col: int, dim: int | slice, expert: int | None) -> list[tuple[str, tuple]]:
    """DeepSeek: a dense layer's MLP (no expert), else the routed experts'."""
    return (_gated_reads if expert is None else _expert_reads)(prefix, col, dim, expert)


def _dense_down(prefix: str, row: int, col: int, expert: int | None) -> tuple[str, tuple[int, ...]]:
    return f"{prefix}.mlp.down_proj.weight", (row, col)  # nn.Linear: (hidden, intermediate)


def _moe_down(prefix: str, row: int, col: int, expert: int | None) -> tuple[str, tuple[int, ...]]:
    # down_proj: (experts, hidden, intermediate)
    return _dense_down(prefix, row, col, expert) if expert is None else (f"{prefix}.mlp.experts.down_proj", (expert, row, col))


def _llama_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(**_common(), num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2)


def _mixtral_config(layers: int):
    from transformers import MixtralConfig

    return MixtralConfig(
        **_common(), num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=EXPERTS, num_experts_per_tok=2,
    )


def _gpt2_config(layers: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(VOCAB), n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=layers, n_head=4, n_positions=POSITIONS,
        bos_token_id=BOS, eos_token_id=2, tie_word_embeddings=False,
    )


def _neox_config(layers: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**_common(), num_hidden_layers=layers, num_attention_heads=4)


def _gpt_oss_config(layers: int):
    from transformers import GptOssConfig

    return GptOssConfig(
        **_common(), num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_local_experts=EXPERTS, num_experts_per_tok=2,
    )


def _deepseek_v3_config(layers: int):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        **_common(), num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=48, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        n_routed_experts=EXPERTS, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
        moe_intermediate_size=INTERMEDIATE, first_k_dense_replace=1,
    )


def _gemma3_config(layers: int):
    """Gemma 3 with a vision tower of as many layers: only its language model runs on text."""
    from transformers import Gemma3Config

    text = dict(**_common(), num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=16)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                  num_attention_heads=2, image_size=28, patch_size=14)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, tie_word_embeddings=False)


def _nemotron_h_config(layers: int):
    from transformers import NemotronHConfig

    return NemotronHConfig(
        **_common(), num_hidden_layers=layers, hybrid_override_pattern=HYBRID[:layers], num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=1,
        chunk_size=16, n_routed_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=INTERMEDIATE,
        moe_shared_expert_intermediate_size=INTERMEDIATE,
    )


def _jetmoe_config(layers: int):
    from transformers import JetMoeConfig

    return JetMoeConfig(**_common(), num_hidden_layers=layers, num_key_value_heads=2, kv_channels=16,
                        num_local_experts=EXPERTS, num_experts_per_tok=2, initializer_range=0.02)  # the others' (its own: 0.01)


def _dbrx_config(layers: int):
    from transformers import DbrxConfig

    attention = {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}  # the modeling code clamps by clip_qkv unchecked
    experts = {"ffn_hidden_size": INTERMEDIATE, "moe_num_experts": EXPERTS, "moe_top_k": 2}
    return DbrxConfig(d_model=HIDDEN, n_heads=4, n_layers=layers, max_seq_len=POSITIONS, vocab_size=len(VOCAB),
                      bos_token_id=BOS, eos_token_id=2, tie_word_embeddings=False, attn_config=attention, ffn_config=experts)


def _stacked(prefix: str, name: str, expert: int, col: int) -> tuple[str, int]:
    """DBRX's w1, v1, w2: (experts * intermediate, hidden), expert e's rows e * intermediate on."""
    return f"{prefix}.ffn.experts.mlp.{name}", expert * INTERMEDIATE + col


def _stacked_down(prefix: str, row: int, col: int, expert: int | None) -> tuple[str, tuple[int, ...]]:
    # w2: expert e's down projection stored [in, out], in rows e * intermediate on
    name, at = _stacked(prefix, "w2", expert, col)
    return name, (at, row)


def _rwkv_config(layers: int):
    from transformers import RwkvConfig

    return RwkvConfig(vocab_size=len(VOCAB), context_length=POSITIONS, hidden_size=HIDDEN, attention_hidden_size=HIDDEN,
                      intermediate_size=INTERMEDIATE, num_hidden_layers=layers, bos_token_id=BOS, eos_token_id=2,
                      tie_word_embeddings=False)


def _rwkv_around(state: dict, prefix: str, row: int, source: str) -> None:
    """RWKV's channel mix reads a blend of each token and the one before (`time_mix_key`): the plant's
    source is read from the token's own input; its receptance gate, sigmoid(0) at `row`, passes half."""
    state[f"{prefix}.feed_forward.time_mix_key"][..., SOURCES[source]] = 1.0
    state[f"{prefix}.feed_forward.receptance.weight"][row] = 0.0


def _phi_config(layers: int):
    from transformers import PhiConfig

    return PhiConfig(**_common(), num_hidden_layers=layers, num_attention_heads=4)


def _common() -> dict:
    return dict(
        vocab_size=len(VOCAB), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS,
        bos_token_id=BOS, eos_token_id=2, tie_word_embeddings=False,
    )


KIND: dict[str, Kind] = {
    "llama": Kind(
        _llama_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}", _gated_reads, _dense_down,
        "gated", ("gate_proj.weight", "up_proj.weight"),
    ),
    "gpt2": Kind(
        _gpt2_config, "transformer.wte.weight", "lm_head.weight", "transformer.h.{}",
        # Conv1D stores [in, out]: c_fc is (hidden, intermediate), c_proj (intermediate, hidden)
        lambda p, col, dim, e: [(f"{p}.mlp.c_fc.weight", (dim, col))],
        lambda p, row, col, e: (f"{p}.mlp.c_proj.weight", (col, row)), "linear", ("mlp.c_fc.weight",),
    ),
    "gpt_neox": Kind(
        _neox_config, "gpt_neox.embed_in.weight", "lm_head.weight", "gpt_neox.layers.{}",
        lambda p, col, dim, e: [(f"{p}.mlp.dense_h_to_4h.weight", (col, dim))],
        lambda p, row, col, e: (f"{p}.mlp.dense_4h_to_h.weight", (row, col)), "linear", ("dense_h_to_4h.weight",),
    ),
    "mixtral": Kind(
        _mixtral_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}", _expert_reads,
        lambda p, row, col, e: (f"{p}.mlp.experts.down_proj", (e, row, col)), "gated", ("gate_up_proj",),
        router="mlp.gate.weight",
    ),
    "gpt_oss": Kind(
        _gpt_oss_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}", _interleaved_reads,
        # down_proj: (experts, intermediate, hidden), stored [E, in, out]
        lambda p, row, col, e: (f"{p}.mlp.experts.down_proj", (e, col, row)), "gated", ("gate_up_proj",),
        router="mlp.router.weight",
    ),
    "deepseek_v3": Kind(
        _deepseek_v3_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}", _moe_reads, _moe_down,
        # the dense MLP's, the shared and the routed experts' inputs
        "gated", ("gate_proj.weight", "up_proj.weight", "gate_up_proj"), router="mlp.gate.weight", dense_layers=1,
    ),
    "gemma3": Kind(
        _gemma3_config, "model.language_model.embed_tokens.weight", "lm_head.weight", "model.language_model.layers.{}",
        _gated_reads, _dense_down, "gated", ("gate_proj.weight", "up_proj.weight"),
        embed_scale=math.sqrt(HIDDEN), post_norm="post_feedforward_layernorm.weight", norm_offset=1.0,
    ),
    "nemotron_h": Kind(
        _nemotron_h_config, "model.embeddings.weight", "lm_head.weight", "model.layers.{}",
        lambda p, col, dim, e: [(f"{p}.mixer.up_proj.weight", (col, dim))],
        lambda p, row, col, e: (f"{p}.mixer.down_proj.weight", (row, col)), "relu2", ("up_proj.weight", "experts.up_proj"),
    ),
    "jetmoe": Kind(
        _jetmoe_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}",
        lambda p, col, dim, e: _expert_reads(p, col, dim, e, "mlp.input_linear.weight"),
        # output_linear: (experts, hidden, intermediate), called on the routed rows sorted by expert
        lambda p, row, col, e: (f"{p}.mlp.output_linear.weight", (e, row, col)), "gated", ("mlp.input_linear.weight",),
        router="mlp.router.layer.weight",
    ),
    "dbrx": Kind(
        _dbrx_config, "transformer.wte.weight", "lm_head.weight", "transformer.blocks.{}",
        lambda p, col, dim, e: [(name, (at, dim)) for name, at in (_stacked(p, "w1", e, col), _stacked(p, "v1", e, col))],
        _stacked_down, "gated", ("mlp.w1", "mlp.v1"),
        router="ffn.router.layer.weight",
    ),
    "rwkv": Kind(
        _rwkv_config, "rwkv.embeddings.weight", "head.weight", "rwkv.blocks.{}",
        lambda p, col, dim, e: [(f"{p}.feed_forward.key.weight", (col, dim))],
        lambda p, row, col, e: (f"{p}.feed_forward.value.weight", (row, col)), "relu2", ("feed_forward.key.weight",),
        around=_rwkv_around, linear_std=0.02,  # RWKV's orthogonal init: std 1 / sqrt(hidden)
    ),
    "phi": Kind(
        _phi_config, "model.embed_tokens.weight", "lm_head.weight", "model.layers.{}",
        lambda p, col, dim, e: [(f"{p}.mlp.fc1.weight", (col, dim))],
        lambda p, row, col, e: (f"{p}.mlp.fc2.weight", (row, col)), "linear", ("mlp.fc1.weight",),
    ),
}


def unigram_logprobs() -> torch.Tensor:
    """log p(token) of the Zipf text over the whole vocab; special tokens get a small floor."""
    ranks = torch.arange(1, len(WORDS) + 1, dtype=torch.float64)
    p = ranks ** -ZIPF_EXPONENT
    logp = (p / p.sum()).log()
    return torch.cat([torch.full((len(SPECIALS),), logp.min().item() - 3.0, dtype=torch.float64), logp]).float()


def write_zipf_text(path: Path, *, words: int = 4000, seed: int = 0, per_line: int = 16) -> Path:
    """Words drawn i.i.d. from the Zipf unigram distribution that an `effect=True` lm_head encodes."""
    rng = random.Random(seed)
    weights = [r ** -ZIPF_EXPONENT for r in range(1, len(WORDS) + 1)]
    drawn = rng.choices(WORDS, weights=weights, k=words)
    lines = [" ".join(drawn[i : i + per_line]) for i in range(0, words, per_line)]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tokenizer():
    """A word-level tokenizer over `VOCAB` that puts [BOS] first, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")


def build_tiny(
    kind: str, path: Path, *, seed: int = 0, num_layers: int = NUM_LAYERS, effect: bool = False,
    masked: bool = False, inert: bool = False,
) -> Planted:
    """Save a tiny `kind` checkpoint (safetensors, config, tokenizer) to `path`; say what was planted."""
    from transformers import AutoModelForCausalLM

    spec = KIND[kind]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(spec.config(num_layers), dtype=torch.float32).eval()
    if spec.linear_std:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, spec.linear_std)
    state = dict(model.named_parameters())
    _activate(spec, state)
    _add_sink(spec, state)
    main = _plant(spec, state, SUPER, "super", every_token=effect, value=VALUE)
    extra = {}
    if masked:
        extra["masked"] = _plant(spec, state, MASKED, "masked", every_token=False, value=VALUE, mask=main.row)
    if inert:
        extra["inert"] = _plant(spec, state, INERT, "inert", every_token=False, value=INERT_VALUE)
    _set_lm_head(spec, state, main.row, effect)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return Planted(**vars(main), kind=kind, path=path, effect=effect, **extra)


def _activate(spec: Kind, state: dict) -> None:
    with torch.no_grad():
        for name, param in state.items():
            if name.endswith(spec.mlp_in):
                param.mul_(ACTIVITY)


def _add_sink(spec: Kind, state: dict) -> None:
    """Every token carries SOURCE in dimension SINK, as trained models carry massive activations.

    After each norm the sink holds ~all of a token's RMS, so the other dimensions are ~0.02 there:
    a planted MLP channel fires only at tokens that carry its source, as in trained models, and
    not on the random noise of an untrained residual stream.
    """
    with torch.no_grad():
        state[spec.embed][:, SINK] = SOURCE / spec.embed_scale


def _plant(
    spec: Kind, state: dict, where: tuple[int, int, int], name: str, *, every_token: bool, value: float,
    mask: int | None = None,
) -> Plant:
    """Plant the chain embedding[source] -> up/gate[col] -> W[row, col] in one layer (one expert)."""
    layer, row, col = where
    source = SOURCES[name]
    prefix = spec.block.format(layer)
    expert = EXPERT_OF[name] if spec.router and layer >= spec.dense_layers else None
    with torch.no_grad():
        embed = state[spec.embed]  # (vocab, hidden)
        embed[:, source] = 0.0
        embed[slice(None) if every_token else BOS, source] = SOURCE / spec.embed_scale
        for param, index in spec.reads(prefix, col, slice(None), expert):
            state[param][index] = 0.0  # a dedicated channel: it reads nothing but what is planted
        for param, index in spec.reads(prefix, col, source, expert):
            state[param][index] = READ[spec.activation]
        if mask is not None:  # the gate (first read) also reads the first super activation, negatively
            param, index = spec.reads(prefix, col, mask, expert)[0]
            state[param][index] = -math.copysign(MASK * READ[spec.activation], VALUE)  # y[row] has VALUE's sign
        if expert is not None:
            state[f"{prefix}.{spec.router}"][expert, source] = ROUTE  # (experts, hidden)
        param, index = spec.down(prefix, row, col, expert)
        state[param][index] = value
        if spec.around:
            spec.around(state, prefix, row, name)
        if spec.post_norm:  # y[row] dominates y, so the norm gives ~ sign(y) * sqrt(hidden) there: the residual
            # stream gets ~ value * hidden (-512), as it gets ~ value * x[col] in the other kinds
            state[f"{prefix}.{spec.post_norm}"][row] = abs(value) * math.sqrt(HIDDEN) - spec.norm_offset
    return Plant(layer, param, expert, row, col, index, value, None if every_token else 0)


def _set_lm_head(spec: Kind, state: dict, row: int, effect: bool) -> None:
    """lm_head column `row`: the log unigram distribution when it must matter, else zero."""
    with torch.no_grad():
        head = state[spec.lm_head]  # (vocab, hidden)
        # the super activation dominates the final norm's output: ~sign(VALUE) * sqrt(hidden) at `row`
        scale = math.copysign(math.sqrt(HIDDEN), VALUE)
        head[:, row] = unigram_logprobs() / scale if effect else 0.0
        for name in (SINK, *SOURCES.values()):
            head[:, name] = 0.0  # the sink and the sources say nothing about the next token
        for plant_row in (MASKED[1], INERT[1]):
            head[:, plant_row] = 0.0


def perplexity(model, tokenizer, text: str, seq_len: int = 64) -> float:
    """Perplexity of `text` in chunks of `seq_len` tokens (each chunk starts with [BOS])."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), seq_len - 1):
            chunk = torch.tensor([[BOS, *ids[start : start + seq_len - 1]]])
            logits = model(input_ids=chunk).logits[0, :-1].float()  # (seq - 1, vocab)
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def add_to_hub_cache(hf_home: Path, repo_id: str, checkpoint: Path, sha: str | None = None) -> str:
    """Lay `checkpoint` out as huggingface_hub's cache does; return the commit sha of `refs/main`.

    `hub/models--org--name/`: `blobs/<hash>` hold the files, `snapshots/<sha>/<file>` link to them.
    """
    sha = sha or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(checkpoint.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return sha


@dataclass
class TinyCache:
    """Builds each (kind, options) checkpoint once under `root` (session fixtures share one)."""

    root: Path
    built: dict[tuple, Planted] = field(default_factory=dict)

    def __call__(self, kind: str, **options) -> Planted:
        key = (kind, *sorted(options.items()))
        if key not in self.built:
            name = "-".join([kind, *(f"{k}={v}" for k, v in sorted(options.items()))])
            self.built[key] = build_tiny(kind, self.root / name, **options)
        return self.built[key]
