"""GGUF files read straight into the model (issue 16, item 3): the model must be the one transformers'
own GGUF path builds, every tensor equal (llama.cpp's Q/K row permutation undone the same way),
with the config transformers reads from the file; an architecture transformers treats specially
is left to transformers.

Small GGUF files are written with `gguf.GGUFWriter` (quantized, half and float tensors); the real
SmolLM2 file is compared too.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from unittest import mock

import gguf
import numpy as np
import pytest
import torch

from catalog import gguf_meta
from catalog.gguf_load import dequantize, gguf_config, parsed_once
from catalog.gguf_meta import BigEndianError, part_names, read_header, read_model_header
from catalog.identity import FROM_GGUF, gguf_identity
from catalog.loading import gguf_file, load, read_gguf
from catalog.sources import resolve

from gguf_files import finish, split_copy, write_big_endian, write_gguf, write_tokenizer_gguf
from same_model import assert_same_model, tied

Q = gguf.GGMLQuantizationType


def hf_reference(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()


def fast(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return read_gguf(gguf_file(resolve(str(path))), config, torch.device("cpu"), dtype, False)


@pytest.mark.parametrize("arch,heads,kv_heads,tie", [("llama", 4, 2, False), ("llama", 4, 4, True), ("qwen2", 4, 2, False),
                                                   ("gpt2", 4, 4, False), ("phi3", 4, 4, False), ("starcoder2", 4, 2, False),
                                                   ("qwen3", 4, 2, False), ("gemma2", 4, 2, True), ("nemotron", 4, 2, False)])
def test_a_written_gguf_loads_as_transformers_loads_it(tmp_path, arch, heads, kv_heads, tie):
    """Llama's Q and K rows are stored permuted (grouped-query and not); qwen2's are not, and it has
    biases; GPT-2's Conv1D weights are stored transposed and its head is renamed by transformers'
    processor itself; Phi-3's attention and gate/up projections are fused; StarCoder2 has biases
    and layer norms; Qwen3 normalizes queries and keys, Gemma 2 has four norms a block and
    Nemotron a squared-ReLU MLP without a gate."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = write_gguf(tmp_path / f"{arch}.gguf", arch, heads=heads, kv_heads=kv_heads, tied=tie)
    assert gguf_config(read_header(path)) == load_gguf_checkpoint(str(path))["config"]
    for dtype in (torch.float32, torch.bfloat16):
        ours = fast(path, dtype)
        assert ours is not None
        assert_same_model(ours, hf_reference(path, dtype))


@pytest.mark.parametrize("arch", ["bloom", "falcon"])
@pytest.mark.parametrize("copy", [True, False], ids=["output a copy of the embedding", "output of its own"])
def test_an_output_the_config_ties_is_read_as_transformers_reads_it(tmp_path, arch, copy):
    """BLOOM's and Falcon's configs tie the output to the embedding whatever the file holds:
    llama.cpp writes BLOOM's embedding again as output.weight, which transformers ties; an output
    of other values it keeps apart. Both once ended in a KeyError ('lm_head.weight')."""
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, output_copy=copy)
    ours, theirs = fast(path), hf_reference(path)
    assert ours is not None
    assert_same_model(ours, theirs)
    assert tied(ours) == copy


def test_llamas_query_rows_are_unpermuted(tmp_path):
    """The file's Q rows are llama.cpp's interleaved order; the model's are transformers' halves."""
    path = write_gguf(tmp_path / "llama.gguf", "llama")
    header = read_header(path)
    entry = next(t for t in header.tensors if t.name == "blk.0.attn_q.weight")
    stored = torch.from_numpy(dequantize(np.memmap(path, np.uint8, "c"), entry))
    loaded = fast(path).model.layers[0].self_attn.q_proj.weight
    head = 64 // 4
    assert not torch.equal(loaded, stored)
    assert torch.equal(loaded[:head // 2], stored[0:head:2])  # the first half of head 0: its even rows


def test_a_split_gguf_is_read_as_one_file(tmp_path):
    """llama.cpp's parts (`-00001-of-00003.gguf`, ...): the first's metadata, every part's tensors,
    each read from its own part; a missing or renamed part is refused naming it."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole = read_header(write_gguf(tmp_path / "whole" / "m.gguf", "llama"))
    write_gguf(tmp_path / "split" / "m.gguf", "llama", split=8)
    parts = sorted((tmp_path / "split").glob("m-*-of-00003.gguf"))
    header = read_model_header(parts[0])
    assert [(t.name, t.shape, t.ggml_type) for t in header.tensors] == [(t.name, t.shape, t.ggml_type) for t in whole.tensors]
    assert sorted({t.file for t in header.tensors}) == parts
    for entry, original in zip(header.tensors, whole.tensors):
        stored = dequantize(np.memmap(entry.file, np.uint8, "c"), entry)
        assert np.array_equal(stored, dequantize(np.memmap(original.file, np.uint8, "c"), original)), entry.name
    assert gguf_config(header) == gguf_config(whole)
    (tmp_path / "renamed.gguf").write_bytes(parts[0].read_bytes())
    with pytest.raises(ValueError, match="renamed.gguf says it is part 1 of 3, which its name does not"):
        read_model_header(tmp_path / "renamed.gguf")
    parts[2].unlink()
    with pytest.raises(ValueError, match="m-00001-of-00003.gguf is part 1 of 3, and part 3 \\(m-00003-of-00003.gguf\\) is not beside it"):
        read_model_header(parts[0])


@pytest.mark.parametrize("split", [0, 8])
def test_a_tensor_stored_twice_is_refused(tmp_path, split):
    """A second tensor of one name, in one file or in another part: which to load would be a guess."""
    write_gguf(tmp_path / "m.gguf", "llama", split=split)
    files = sorted(tmp_path.glob("m*.gguf"))
    victim = next(t.name for t in read_header(files[-1]).tensors if t.name.startswith("blk.1."))
    twin = victim.replace("blk.1.", "blk.0.")  # as long: the file stays whole
    files[-1].write_bytes(files[-1].read_bytes().replace(victim.encode(), twin.encode(), 1))
    with pytest.raises(ValueError, match=f"tensor {re.escape(twin)} is stored twice"):
        read_model_header(files[0])


def test_a_big_endian_gguf_is_named_with_the_command_that_converts_it(tmp_path):
    """A file written for s390x is whole, not corrupt: the line gives gguf's own converter, which makes it readable."""
    import subprocess
    import sys

    path = write_big_endian(tmp_path / "big.gguf")
    with pytest.raises(BigEndianError, match="big.gguf is a big-endian GGUF file") as refused:
        read_header(path)
    command = str(refused.value).rsplit("`", 2)[1].split()  # gguf-convert-endian big.gguf little
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_convert_endian", str(path), *command[2:]], input="YES\n",
                   text=True, capture_output=True, check=True)
    (entry,) = read_header(path).tensors
    assert np.array_equal(dequantize(np.memmap(path, np.uint8, "c"), entry), np.arange(64, dtype=np.float32).reshape(2, 32))


@pytest.mark.parametrize("arch", ["gemma3", "stablelm", "t5"])
def test_an_architecture_transformers_treats_specially_is_left_to_it(tmp_path, arch):
    writer = gguf.GGUFWriter(tmp_path / "special.gguf", arch)
    writer.add_block_count(1)
    finish(writer)
    assert gguf_config(read_header(tmp_path / "special.gguf")) is None


@pytest.mark.integration
def test_smollm2_loads_as_transformers_loads_it(smollm2_gguf):
    from transformers import AutoConfig, AutoTokenizer

    loaded = load(resolve(str(smollm2_gguf)), device="cpu", dtype="float32")
    assert loaded.loader == "gguf"
    assert_same_model(loaded.model, hf_reference(smollm2_gguf))
    config = AutoConfig.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert loaded.model.config.to_dict() == config.to_dict() | {"dtype": "float32"}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    text = "Shakespeare's plays, 1623: the First Folio."
    assert loaded.tokenizer(text).input_ids == tokenizer(text).input_ids


@pytest.mark.parametrize("name,parts", [
    ("m-00002-of-00003.gguf", ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]),
    ("Q4_K_M/m-00001-of-00002.gguf", ["Q4_K_M/m-00001-of-00002.gguf", "Q4_K_M/m-00002-of-00002.gguf"]),  # in a repo's folder
    ("m-00001-of-00000.gguf", ["m-00001-of-00000.gguf"]),  # a count of no parts: not a split name
    ("m.Q4_K_M.gguf", ["m.Q4_K_M.gguf"]),
])
def test_a_part_name_gives_every_part_of_its_model(tmp_path, name, parts):
    """A file named as none resolves as itself (`-of-00000` ended in an IndexError)."""
    assert part_names(name) == parts
    if parts == [name]:
        (tmp_path / name).write_bytes(b"GGUF")
        assert resolve(str(tmp_path / name)).gguf_file == name


@pytest.mark.integration
def test_smollm2_split_in_parts_loads_as_the_whole_file(smollm2_gguf, tmp_path):
    """Any part names the model (its first part is its source); every part's tensors are read."""
    parts = split_copy(smollm2_gguf, tmp_path / smollm2_gguf.name, 100)
    sources = [resolve(str(part)) for part in parts]
    assert {(s.source, s.gguf_file) for s in sources} == {(str(parts[0]), parts[0].name)}
    assert len(parts) == 3 and sources[1].weight_files() == parts
    split, whole = load(sources[1], device="cpu", dtype="float32"), load(resolve(str(smollm2_gguf)), device="cpu", dtype="float32")
    assert split.loader == "gguf" and split.info.name == whole.info.name and split.info.quantization == "Q4_1"
    assert_same_model(split.model, whole.model)


@pytest.mark.integration
def test_a_gguf_load_parses_the_header_once_and_names_the_model_from_it(smollm2_gguf):
    """The loader and the model record share one parse of the header; the tokenizer's vocabulary
    and merges (98k strings) are read once more, by us: transformers' own reader, which AutoConfig,
    AutoTokenizer and the tokenizer each call, never parses the file."""
    from transformers.integrations.gguf import reader

    source = resolve(str(smollm2_gguf))
    with (mock.patch.object(gguf_meta, "_key_values", wraps=gguf_meta._key_values) as parses,
          mock.patch.object(reader, "_read_metadata", wraps=reader._read_metadata) as theirs):
        loaded = load(source, device="cpu")
    assert [call.kwargs.get("everything", False) for call in parses.call_args_list] == [False, True]
    assert theirs.call_count == 0
    assert (loaded.info.name, loaded.info.named_from, loaded.info.quantization) == (
        gguf_identity(smollm2_gguf).name, FROM_GGUF, "Q4_1")


VOCABULARY = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


@pytest.mark.parametrize("keys", [(), VOCABULARY], ids=["counts", "vocabulary"])
def test_the_metadata_the_tokenizer_gets_is_transformers_own(tmp_path, keys):
    """`read_everything` stands in for transformers' `read_gguf_metadata`: the same dict (arrays
    of strings not asked for as their lengths, the rest in full, the same types) and tensor names."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    tokens = [f"t{i}" for i in range(100)] + ["\u2581the", "\u00e9t\u00e9", "<0x0A>", "\U0001f600", ""]
    for path in (write_tokenizer_gguf(tmp_path / "tok.gguf", tokens), write_gguf(tmp_path / "gpt2.gguf", "gpt2")):
        ours = gguf_meta.read_everything(path).as_transformers(keys)
        theirs = read_gguf_metadata(str(path), keys)
        assert ours == theirs
        assert [type(v) for v in ours[0].values()] == [type(v) for v in theirs[0].values()]


@pytest.mark.parametrize("length", [2**40, 2**60])
def test_an_array_longer_than_its_file_is_refused_before_it_is_read(tmp_path, length):
    """A corrupt length of an array of numbers, the last key of a file without tensors: the header
    once sought past it (2**60 floats: OSError) and the whole read asked for 4 TiB (MemoryError,
    reported as the host's memory)."""
    path, key = tmp_path / "long.gguf", b"tokenizer.ggml.scores"
    array = struct.pack("<IIQ", 9, 6, length)  # an array, of float32, its length
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + array + b"\0" * 64)
    for read in (read_header, gguf_meta.read_everything):
        with pytest.raises(ValueError, match="truncated"):
            read(path)


@pytest.mark.integration
def test_smollm2s_metadata_is_transformers_own(smollm2_gguf):
    from transformers.integrations.gguf.reader import read_gguf_metadata

    for keys in ((), VOCABULARY):
        assert gguf_meta.read_everything(smollm2_gguf).as_transformers(keys) == read_gguf_metadata(str(smollm2_gguf), keys)


def test_metadata_that_is_not_utf8_fails_as_transformers_fails(tmp_path):
    """A token or a name that does not decode is left to transformers' reader, whose error is the one
    it gives unaided, not a tokenizer built of replacement characters."""
    import transformers.integrations.gguf as package

    unaided_reader = package.read_gguf_metadata
    for path, keys in [(write_tokenizer_gguf(tmp_path / "token.gguf", [b"ok", b"\xff\xfe"]), VOCABULARY),
                       (write_tokenizer_gguf(tmp_path / "name.gguf", ["ok"], name=b"tiny \xff"), ())]:
        with pytest.raises(UnicodeDecodeError) as unaided:
            unaided_reader(str(path), keys)
        with parsed_once(path, {}):
            assert package.read_gguf_metadata is not unaided_reader
            with pytest.raises(UnicodeDecodeError) as ours:
                package.read_gguf_metadata(str(path), keys)
        assert str(ours.value) == str(unaided.value)


@pytest.mark.parametrize("kind,width", [("Q4_1", 1530), ("Q4_K", 576)])
def test_a_tensor_whose_rows_are_not_whole_blocks_is_refused(kind, width):
    """A tensor table claiming rows that blocks do not fill (a k-quant type on 576-wide rows) names the tensor."""
    from catalog.gguf_meta import TensorEntry

    with pytest.raises(ValueError, match=f"tensor t's rows of {width} values are not whole {kind} blocks"):
        dequantize(np.zeros(1 << 20, np.uint8), TensorEntry("t", (4, width), int(Q[kind]), 0))


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_torch_dequantization_is_ggufs_bit_for_bit(kind):
    """The block types dequantized by torch (`TORCH_BLOCKS`: the legacy types and the k-quants of
    the Hub's Q4_K_M and Q5_K_M files) give exactly `gguf.dequantize`'s float32 bits. The blocks
    are random bytes: every bit field, sign and scale (float16 zeros, subnormals, infinities, NaNs)."""
    from catalog.gguf_blocks import TORCH_BLOCKS
    from catalog.gguf_meta import TensorEntry

    block, block_bytes = gguf.GGML_QUANT_SIZES[Q[kind]]
    rows, blocks_per_row = 64, 3
    quantized = np.random.default_rng(0).integers(0, 256, (rows, blocks_per_row * block_bytes), dtype=np.uint8)
    data = np.concatenate([np.zeros(7, np.uint8), quantized.ravel()])  # an odd offset, as in a file
    ours = dequantize(data, TensorEntry("t", (rows, blocks_per_row * block), int(Q[kind]), 7))
    with np.errstate(all="ignore"):  # its infinities times zero
        theirs = gguf.dequantize(quantized, Q[kind])
    assert kind in TORCH_BLOCKS and ours.shape == theirs.shape == (rows, blocks_per_row * block)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.array_equal(np.where(np.isnan(ours), 0, ours).view(np.uint32), np.where(np.isnan(theirs), 0, theirs).view(np.uint32))
