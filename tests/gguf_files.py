"""Small GGUF files written with `gguf.GGUFWriter`: a 2-layer model of an architecture with random
weights (quantized, half and float tensors) and no tokenizer, as transformers would read them.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
VOCAB = {"phi3": 32064}  # Phi-3's config pads with token 32000, which must be in the vocabulary


def write_gguf(path: Path, arch: str, *, heads: int = 4, kv_heads: int = 2, tied: bool = False, output_copy: bool = False,
               split: int = 0) -> Path:
    """A 2-layer, 64-wide model of `arch` with random weights, its 2-D weights in Q8_0 and Q4_0,
    its embedding in F16, norms and biases in F32. `tied`: no output.weight; `output_copy`: the
    embedding written again as output.weight, as llama.cpp writes BLOOM's. `split`: at most that
    many tensors a file, as llama.cpp splits a large model (`name-00001-of-00003.gguf`, ...); the
    second part is returned."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_layer_norm_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    vocab = VOCAB.get(arch, 96)
    writer.add_vocab_size(vocab)
    writer.add_token_list([f"t{i}" for i in range(vocab)])  # the vocabulary size of architectures whose config keys lack it
    config = AutoConfig.for_model(arch, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    names = get_gguf_hf_weights_map(model, TENSOR_PROCESSORS.get(arch, TensorProcessor)())
    shapes = {hf: _stored_shape(model, hf) for hf in names.values()}
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shapes[hf]).astype(np.float32) for name, hf in sorted(names.items())}
    if output_copy:
        tensors["output.weight"] = tensors["token_embd.weight"]
    for index, (name, values) in enumerate(tensors.items()):
        if tied and name == "output.weight":
            continue
        if name == "token_embd.weight" or (output_copy and name == "output.weight"):
            writer.add_tensor(name, values.astype(np.float16))
        elif values.ndim == 2:
            kind = (Q.Q8_0, Q.Q4_0)[index % 2]
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, values)
    finish(writer)
    return min(path.parent.glob(f"{path.stem}-00002-of-*.gguf")) if split else path


def _stored_shape(model, name: str) -> tuple[int, ...]:
    """A tensor's shape in a GGUF file: llama.cpp stores GPT-2's Conv1D weights `[in, out]` as `[out, in]`."""
    from transformers.pytorch_utils import Conv1D

    shape = tuple(model.get_parameter(name).shape)
    return shape[::-1] if isinstance(model.get_submodule(name.rpartition(".")[0]), Conv1D) and len(shape) == 2 else shape


def split_copy(source: Path, path: Path, max_tensors: int) -> list[Path]:
    """`source` written again as llama.cpp's gguf-split writes a large model: its metadata in the
    first part, at most `max_tensors` tensors a part (`path`'s stem, `-00001-of-0000N.gguf`, ...)."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(path, str(reader.fields["general.architecture"].contents()), split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # the writer writes these itself
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    finish(writer)
    return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))


def write_big_endian(path: Path) -> Path:
    """A one-tensor GGUF written for a big-endian machine (s390x), its values 0 to 63 in a 2 x 32 F32 tensor."""
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))  # byte-swapped as written
    finish(writer)
    return path


def write_tokenizer_gguf(path: Path, tokens: list, name: str | bytes = "tiny") -> Path:
    """A GGUF holding a tokenizer's arrays of every kind: strings (vocabulary, merges), floats,
    integers, and short ones of each; `tokens` and `name` as bytes may be other than UTF-8."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.name", name)
    writer.add_token_list(tokens)
    writer.add_token_merges(["\u0120 t", "\u00e9 \u2581"] * 40)
    writer.add_token_scores([float(i) / 3 for i in range(len(tokens))])
    writer.add_token_types([1] * len(tokens))
    writer.add_array("test.short_strings", ["a", "\u00df"])
    writer.add_array("test.empty", [])
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_tensor("token_embd.weight", np.ones((len(tokens), 8), dtype=np.float32))
    finish(writer)
    return path


def finish(writer: gguf.GGUFWriter) -> None:
    """Write out what was added to `writer`: header, key-values, tensors."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
