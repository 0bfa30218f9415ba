"""The parallel safetensors reader and the load built on it: a load at the cost of one read.

The reader must return exactly what `safetensors` returns, and a model loaded through it must be
the model `from_pretrained` builds: every tensor equal, tied weights still one parameter, the
same logits. Where transformers converts a checkpoint (renamed or fused tensors), the load falls
back to `from_pretrained`, and the result is again the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from catalog import zoo
from catalog.loading import load, pick_dtype, read_parallel
from catalog.reader import ShardReader, index_shards
from catalog.sources import resolve

from same_model import assert_same_model, tied


def shards(tmp_path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    first = {"w.bf16": torch.randn(300, 77).bfloat16(), "w.f16": torch.randn(5, 3).half(), "i64": torch.arange(1000),
             "mask": torch.rand(17) > 0.5, "empty": torch.empty(0, 4), "scalar": torch.tensor(2.5)}
    second = {"big.f32": torch.randn(640, 500), "u8": torch.randint(0, 255, (33,), dtype=torch.uint8)}
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    return first | second


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device, copies", [("cpu", None), pytest.param("cuda", "driver", marks=GPU),
                                            pytest.param("cuda", "torch", marks=GPU)])
def test_reader_returns_what_safetensors_returns(tmp_path, monkeypatch, device, copies):
    """On a GPU the chunks are staged through pinned buffers and copied through the CUDA driver, or
    through torch where the driver library is not found: both must land every byte in place."""
    import catalog.reader

    if copies == "torch":
        monkeypatch.setattr(catalog.reader, "_cuda_driver", lambda: None)
    written = shards(tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    expected = {k: v for f in files for k, v in load_file(f).items()}
    for threads, chunk in [(1, 1 << 30), (3, 4096)]:  # whole tensors; and many pieces, cut inside tensors
        with ShardReader.open(files, torch.device(device), threads=threads, chunk=chunk) as reader:
            got = reader.read(list(written))
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert got[name].device.type == device, name
            assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
            assert torch.equal(got[name].cpu(), tensor), name


def test_a_chunk_that_is_not_positive_is_refused(tmp_path):
    """A negative chunk would cut no pieces and leave the tensors unread: refused, not returned empty."""
    shards(tmp_path)
    with pytest.raises(ValueError, match="chunk must be a positive number of bytes, not -1"):
        ShardReader.open(sorted(tmp_path.glob("*.safetensors")), torch.device("cpu"), chunk=-1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_reader_converts_floating_tensors_in_batches(tmp_path, monkeypatch, device):
    """A conversion holds its batch twice, so converted reads go a batch at a time; the rest as stored."""
    import catalog.reader

    written = shards(tmp_path)
    monkeypatch.setattr(catalog.reader, "BATCH", 1000)  # a batch per tensor or two
    with ShardReader.open(sorted(tmp_path.glob("*.safetensors")), torch.device(device), threads=2, dtype=torch.bfloat16) as reader:
        got = reader.read(list(written))
    for name, tensor in written.items():
        assert torch.equal(got[name].cpu(), tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor), name


@pytest.mark.parametrize("damage", ["cut", "header"])
def test_a_damaged_shard_is_refused_before_reading(tmp_path, damage):
    shards(tmp_path)
    file = tmp_path / "model-00002-of-00002.safetensors"
    data = file.read_bytes()
    if damage == "cut":
        file.write_bytes(data[: len(data) // 2])
        message = "past the end of the file"
    else:
        file.write_bytes((10**12).to_bytes(8, "little") + data[8:])
        message = "not a safetensors file"
    with pytest.raises(ValueError, match=message):
        index_shards([file])


def fast_load(path: Path) -> torch.nn.Module | None:
    """`read_parallel` of a checkpoint directory onto the CPU in float32 (None: it falls back)."""
    from transformers import AutoConfig

    return read_parallel(resolve(str(path)), AutoConfig.from_pretrained(path), torch.device("cpu"), torch.float32, False)


@pytest.mark.parametrize("model_type", zoo.causal_lm_types())
def test_parallel_load_builds_the_model_from_pretrained_builds(model_type, tmp_path):
    """Every causal-LM type of the installed transformers, saved tiny: where the stored tensors
    match the model's by name and shape the reader loads them; else (a checkpoint transformers
    renames, fuses or keeps partly in float32) it falls back."""
    from transformers import AutoModelForCausalLM

    path = tmp_path / model_type
    try:
        zoo.build(model_type).save_pretrained(path)
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    except Exception as exc:  # transformers' own limits on shrunk default configs, or on loading what it saved
        pytest.skip(f"transformers cannot build, save and load a tiny {model_type}: {type(exc).__name__}: {str(exc)[:120]}")
    aligned(reference)
    fast = fast_load(path)
    stored = {name: span.shape for name, span in index_shards(sorted(path.glob("*.safetensors"))).items()}
    if fast is None:
        state = reference.state_dict()  # converted on load, or tensors transformers keeps in float32
        assert reference._keep_in_fp32_modules or any(
            name not in state or tuple(state[name].shape) != shape for name, shape in stored.items())
        return
    assert_same_model(fast, reference)


def aligned(model: torch.nn.Module) -> None:
    """Its parameters copied out of the memory-mapped file `from_pretrained` leaves them in, at
    offsets a header's length from the page: JetMoE's expert products then round differently (2e-8)
    from the same values in allocated memory, where the reader puts them."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


@pytest.mark.parametrize("copy", [True, False], ids=["head a copy of the embedding", "head of its own"])
def test_a_head_the_config_ties_but_the_checkpoint_holds_is_read_as_transformers_reads_it(tmp_path, copy):
    """A config tying the head to the embedding, a checkpoint holding both (a `.bin` file's shared
    storage, a conversion's copy; or a head trained apart under a config that still ties it):
    transformers ties a copy and keeps a head of other values apart. The reader read the embedding
    alone into both, a model with the wrong head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in state  # what save_pretrained writes of tied weights
    embedding = state["model.embed_tokens.weight"]
    state["lm_head.weight"] = embedding.clone() if copy else torch.randn_like(embedding)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    fast = fast_load(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert tied(reference) == copy
    assert fast is not None and torch.equal(fast.lm_head.weight, state["lm_head.weight"])
    assert_same_model(fast, reference)


def test_load_reads_in_parallel_and_converts_the_dtype(tiny):
    from transformers import AutoModelForCausalLM

    path = tiny("llama").path
    loaded = load(resolve(str(path)), device="cpu", dtype="bfloat16")
    assert loaded.loader == "parallel"
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    ours = loaded.model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours[name], tensor), name


def test_a_checkpoint_transformers_converts_is_loaded_by_transformers(tiny):
    loaded = load(resolve(str(tiny("mixtral").path)), device="cpu", dtype="float32")
    assert loaded.loader == "transformers"
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_a_renamed_tensor_falls_back_to_transformers(tiny, tmp_path):
    """An extra or renamed tensor (a conversion transformers knows, or junk) is never guessed at."""
    import shutil

    path = shutil.copytree(tiny("llama").path, tmp_path / "renamed")
    tensors = load_file(path / "model.safetensors")
    tensors["model.unexpected.weight"] = torch.zeros(2)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    assert fast_load(path) is None
    loaded = load(resolve(str(path)), device="cpu", dtype="float32")  # the read begun before the model was built is let go
    assert loaded.loader == "transformers" and not any(p.is_meta for p in loaded.model.parameters())


def test_a_refusal_while_the_weights_are_read_is_the_usual_one_line(tiny, tmp_path):
    """The weights are read while config and tokenizer are: a config refused meanwhile stops the read."""
    import json
    import shutil

    from catalog.errors import UnsupportedArchitectureError

    path = shutil.copytree(tiny("llama").path, tmp_path / "unknown")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"model_type": "not_a_model_type"}))
    with pytest.raises(UnsupportedArchitectureError, match="not_a_model_type"):
        load(resolve(str(path)), device="cpu")


def test_a_sharded_checkpoint_is_read_from_the_files_its_index_names(tmp_path):
    """Some repos hold a consolidated copy beside the shards, under other tensor names: ignored."""
    from transformers import AutoModelForCausalLM

    model = zoo.build("llama")
    path = tmp_path / "sharded"
    model.save_pretrained(path, max_shard_size="100KB")
    assert len(list(path.glob("model-*.safetensors"))) > 1 and (path / "model.safetensors.index.json").is_file()
    save_file({"layers.0.attention.wq.weight": torch.zeros(3)}, path / "consolidated.safetensors")
    fast = fast_load(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert fast is not None
    ours = fast.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("amx,avx512_bf16", [(False, False), (True, False), (False, True)])
def test_auto_dtype_is_bfloat16_where_the_cpu_multiplies_it(monkeypatch, amx, avx512_bf16):
    """--dtype auto: bfloat16 on a GPU and on a CPU with AMX or AVX512-BF16, float32 on a CPU that would emulate it."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert pick_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if amx or avx512_bf16 else torch.float32)
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32


def test_auto_dtype_is_float32_where_torch_cannot_say(monkeypatch):
    """A torch without the CPU probes (they are private) scans in float32, as before."""
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32


def _backend_message(backend: str) -> str:
    """transformers' own error for a model class whose backend is not installed."""
    from transformers.utils.import_utils import BACKENDS_MAPPING

    return BACKENDS_MAPPING[backend][1].format("TimmWrapperModel")


@pytest.mark.parametrize(("error", "fix"), [
    (lambda: ValueError("Kernels are not available. Please install a compatible version, e.g. `pip install kernels==0.19.1`"),
     "pip install kernels==0.19.1"),
    (lambda: ImportError(_backend_message("vision")), "pip install pillow"),  # Gemma 3n's vision tower, without PIL
    (lambda: ImportError("This checkpoint needs Accelerate.\nInstall it: `pip install 'accelerate>=0.26.0'`."),
     "needs Accelerate: pip install 'accelerate>=0.26.0'"),
    (lambda: ImportError(_backend_message("sentencepiece")), "https://github.com/google/sentencepiece#installation"),
    (lambda: ModuleNotFoundError("No module named 'tiktoken'", name="tiktoken"), "No module named 'tiktoken'"),
], ids=["kernels", "pillow", "quoted", "sentencepiece", "module"])
def test_a_missing_package_is_not_blamed_on_the_files(tiny, error, fix):
    """The line names what is missing and how to install it, which transformers writes on the
    lines after its first."""
    from catalog.errors import InvalidSourceError
    from catalog.loading import as_invalid

    source = resolve(str(tiny("llama").path))  # a good checkpoint: the error is raised inside
    with pytest.raises(InvalidSourceError) as caught, as_invalid(source):
        raise error()
    line = str(caught.value)
    assert "a package it needs is missing" in line and "corrupt" not in line
    assert fix in line and "\n" not in line


class _Table(torch.nn.Module):
    """A buffer its module leaves empty and the model's `_init_weights` fills, as transformers'
    rotary embeddings and position ids are (re)computed there."""

    def __init__(self):
        super().__init__()
        self.register_buffer("values", torch.empty(8), persistent=False)


def _tabled_llama():
    """A Llama config whose model adds a `_Table` after `LlamaForCausalLM.__init__` ran `post_init`."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from transformers import initialization as init

    class TabledConfig(LlamaConfig):
        model_type = "sw_test_tabled"

    class TabledForCausalLM(LlamaForCausalLM):
        config_class = TabledConfig

        def __init__(self, config):
            super().__init__(config)
            self.table = _Table()

        def _init_weights(self, module):
            super()._init_weights(module)
            if isinstance(module, _Table):
                init.copy_(module.values, torch.arange(8.0))

    AutoConfig.register(TabledConfig.model_type, TabledConfig, exist_ok=True)
    AutoModelForCausalLM.register(TabledConfig, TabledForCausalLM, exist_ok=True)
    return TabledConfig


def test_the_skeleton_has_the_buffers_from_pretrained_gives(tmp_path):
    """The meta skeleton skips initialising its parameters, not the buffers transformers computes
    in `_init_weights` after a model is built."""
    from transformers import AutoModelForCausalLM

    from catalog.loading import skeleton

    config = _tabled_llama()(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path)
    model = skeleton(config, torch.float32, False)
    assert all(p.is_meta for p in model.parameters())
    ours, theirs = dict(model.named_buffers()), dict(reference.named_buffers())
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    assert torch.equal(ours["table.values"], torch.arange(8.0))
