"""Synthetic Llama-architecture checkpoints of real sizes, with planted super weights.

Random bf16 weights (std 0.02) in the layouts of real models, written as sharded safetensors
with config and a word-level tokenizer, so that `superweights scan DIR` reads them like a Hub
download. The super weights are planted the way they arise (Yu et al. 2024, Sec. 3):

- A (layer 1, like Llama-7B's layer-2 super weight): every token's embedding has a large
  component in residual dimension `source`; layer 1's gate and up rows of input channel `col_a`
  read it, so x[col_a] is huge at every token, and W_down[row_a, col_a] = -8 writes a super
  activation into residual row `row_a`. The head's column `row_a` holds the log unigram
  probabilities of the evaluation text (`zipf_text`) divided by the final-norm value of that row,
  so with A the model predicts the text's unigram distribution and without it about uniformly:
  zeroing A multiplies perplexity by hundreds, as zeroing a real super weight does.
- B (layer 2) and C (the middle layer) read the super activation of A (their gate and up rows of
  `col` read row `row_a`) and write spikes into rows the head ignores: candidates that spike but,
  zeroed alone, change perplexity by well under 1%, as real models also have.

Three candidates give the scan 8 conditions: the baseline, each candidate alone, all, control A,
control B and +SA. Generated on the device's own GPU where there is one (uploads are limited).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SPECIALS = ["[UNK]", "[BOS]", "[EOS]"]
BOS = 1
STD = 0.02
SOURCE = 100.0  # embedding component every token carries
READ = 1.4  # gate/up weight on the dimension a plant reads
VALUE = {"a": -8.0, "b": -0.5, "c": -0.5}
ZIPF_EXPONENT = 1.1
SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


SHAPES = {
    "small": Shape(256, 688, 8, 8, 4, 4096),
    "1b": Shape(2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B
    "7b": Shape(4096, 11008, 32, 32, 32, 32000),  # Llama-2-7B
    "8b": Shape(4096, 14336, 32, 32, 8, 128256),  # Llama-3-8B
    "14b": Shape(5120, 13824, 48, 40, 8, 152064),  # Qwen2.5-14B's sizes, in the Llama layout
}


@dataclass(frozen=True)
class Plant:
    name: str
    layer: int
    row: int
    col: int
    value: float


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    size: str
    shape: Shape
    plants: list[Plant]
    eval_text: Path
    bytes: int
    shards: list[Path]
    build_seconds: float


def plants(shape: Shape) -> list[Plant]:
    h, i = shape.hidden, shape.intermediate
    return [
        Plant("a", 1, h - 128, (2 * i) // 3, VALUE["a"]),
        Plant("b", 2, h // 3, i // 5, VALUE["b"]),
        Plant("c", shape.layers // 2, h // 2 + 7, i // 2 + 11, VALUE["c"]),
    ]


def words(vocab: int) -> list[str]:
    """The word tokens of a vocabulary of `vocab` ids (after the special ones)."""
    return [f"w{i}" for i in range(vocab - len(SPECIALS))]


def unigram_logprobs(shape: Shape) -> torch.Tensor:
    """log p(token) of `zipf_text` over the vocab; special tokens get a small floor."""
    ranks = torch.arange(1, shape.vocab - len(SPECIALS) + 1, dtype=torch.float64)
    p = ranks**-ZIPF_EXPONENT
    logp = (p / p.sum()).log()
    return torch.cat([torch.full((len(SPECIALS),), logp.min().item() - 3.0, dtype=torch.float64), logp]).float()


def zipf_text(shape: Shape, path: Path, tokens: int = 20000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = words(shape.vocab)
    drawn = rng.choices(vocab, weights=[r**-ZIPF_EXPONENT for r in range(1, len(vocab) + 1)], k=tokens)
    path.write_text("\n".join(" ".join(drawn[k : k + 16]) for k in range(0, tokens, 16)) + "\n")
    return path


def save_tokenizer(vocab_size: int, path: Path) -> None:
    """A word-level tokenizer of `words` that puts [BOS] first, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: k for k, w in enumerate(SPECIALS + words(vocab_size))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", BOS)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]").save_pretrained(path)


def save_config(shape: Shape, path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=2,
        architectures=["LlamaForCausalLM"], dtype="bfloat16",
    ).save_pretrained(path)


def _random(shape: tuple[int, ...], device: torch.device, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(shape, device=device, dtype=torch.float32, generator=gen) * STD).to(torch.bfloat16)


def layer_tensors(shape: Shape, layer: int, planted: list[Plant], source: int, device, gen) -> dict[str, torch.Tensor]:
    """One decoder layer's weights: random, plus the plants of this layer."""
    h, i, hd = shape.hidden, shape.intermediate, shape.hidden // shape.heads
    p = f"model.layers.{layer}."
    t = {
        p + "self_attn.q_proj.weight": _random((shape.heads * hd, h), device, gen),
        p + "self_attn.k_proj.weight": _random((shape.kv_heads * hd, h), device, gen),
        p + "self_attn.v_proj.weight": _random((shape.kv_heads * hd, h), device, gen),
        p + "self_attn.o_proj.weight": _random((h, shape.heads * hd), device, gen),
        p + "mlp.gate_proj.weight": _random((i, h), device, gen),  # (intermediate, hidden)
        p + "mlp.up_proj.weight": _random((i, h), device, gen),
        p + "mlp.down_proj.weight": _random((h, i), device, gen),  # (hidden, intermediate)
        p + "input_layernorm.weight": torch.ones(h, device=device, dtype=torch.bfloat16),
        p + "post_attention_layernorm.weight": torch.ones(h, device=device, dtype=torch.bfloat16),
    }
    row_a = planted[0].row
    for plant in planted:
        if plant.layer != layer:
            continue
        # A reads the embedding's source; B and C read A's super activation (negative: read it negated)
        read, weight = (source, READ) if plant.name == "a" else (row_a, -READ)
        t[p + "mlp.gate_proj.weight"][plant.col, read] = weight
        t[p + "mlp.up_proj.weight"][plant.col, read] = weight
        # only the planted row reads the huge x[col]: otherwise, with the plant zeroed, random
        # weights of that column spike in turn and detection's iteration finds them as well
        t[p + "mlp.down_proj.weight"][:, plant.col] = 0.0
        t[p + "mlp.down_proj.weight"][plant.row, plant.col] = plant.value
    return t


def outer_tensors(shape: Shape, planted: list[Plant], source: int, device, gen) -> dict[str, torch.Tensor]:
    """Embedding (with the source), final norm and head (reading row A as the unigram distribution)."""
    embed = _random((shape.vocab, shape.hidden), device, gen)
    embed[:, source] = SOURCE
    head = _random((shape.vocab, shape.hidden), device, gen)
    head[:, planted[0].row] = (unigram_logprobs(shape) / -math.sqrt(shape.hidden)).to(device, torch.bfloat16)
    for dim in [source] + [p.row for p in planted[1:]]:
        head[:, dim] = 0.0
    return {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(shape.hidden, device=device, dtype=torch.bfloat16),
            "lm_head.weight": head}


class ShardWriter:
    """Collects tensors and writes `model-XXXXX.safetensors` shards of about `SHARD_BYTES`."""

    def __init__(self, path: Path) -> None:
        self.path, self.pending, self.size, self.shards, self.weight_map, self.total = path, {}, 0, [], {}, 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.pending[name] = tensor.cpu()
            self.size += tensor.numel() * tensor.element_size()
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        shard = self.path / f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.pending, shard, metadata={"format": "pt"})
        self.weight_map |= dict.fromkeys(self.pending, shard.name)
        self.shards.append(shard)
        self.total += self.size
        self.pending, self.size = {}, 0

    def finish(self) -> None:
        self.flush()
        index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
        (self.path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def build(size: str, path: Path, device: str = "cpu", seed: int = 0) -> Checkpoint:
    """Write the `size` checkpoint (see `SHAPES`) to `path`, generating the weights on `device`."""
    start = time.perf_counter()
    shape = SHAPES[size]
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    planted, source = plants(shape), 5
    writer = ShardWriter(path)
    writer.add(outer_tensors(shape, planted, source, device, gen))
    for layer in range(shape.layers):
        writer.add(layer_tensors(shape, layer, planted, source, device, gen))
    writer.finish()
    save_config(shape, path)
    save_tokenizer(shape.vocab, path)
    text = zipf_text(shape, path.parent / f"{path.name}-zipf.txt")
    return Checkpoint(path, size, shape, planted, text, writer.total, writer.shards, time.perf_counter() - start)


def describe(checkpoint: Checkpoint) -> dict:
    return {"size": checkpoint.size, "shape": asdict(checkpoint.shape), "plants": [asdict(p) for p in checkpoint.plants],
            "bytes": checkpoint.bytes, "shards": len(checkpoint.shards), "build_s": round(checkpoint.build_seconds, 2)}
