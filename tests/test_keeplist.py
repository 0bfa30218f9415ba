"""`superweights export --keep-list FORMAT MODEL`: what each quantizer is told to keep, named as
that tool names it, read from the catalog without writing to it.

GGUF names are checked against two outside references: transformers' own GGUF loader (which
maps a GGUF's tensors onto a model of each architecture it reads) and the real SmolLM2 GGUF's
tensor names, read here by the `gguf` package's writer and our header reader alike.
"""

from __future__ import annotations

import json
import re

import pytest

from catalog.config import ScanOptions
from catalog.gguf_meta import read_tensor_names
from db.repository import Catalog

from db_samples import sample_result, times
from gguf_files import finish, split_copy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def saved(catalog_url):
    """A catalog holding org/tiny-llama: W[17, 23] of layer 1 confirmed, W[45, 101] of layer 0 rejected."""
    Catalog(catalog_url).save(sample_result(), **times())
    return catalog_url


def export(superweights, url: str, fmt: str, *extra: str, model: str = "org/tiny-llama") -> tuple[int, str, str]:
    return superweights("export", "--keep-list", fmt, model, "--db", url, *extra)


def test_llama_cpp_arguments_keep_the_tensor_holding_the_super_weight(superweights, saved):
    status, out, err = export(superweights, saved, "llama.cpp")
    assert (status, err) == (0, "")
    assert out == "--tensor-type blk\\.1\\.ffn_down\\.weight=f16\n"
    pattern = out.split()[1].split("=")[0]  # llama-quantize applies it with std::regex_search
    names = [f"blk.{layer}.ffn_down.weight" for layer in range(12)] + ["blk.1.ffn_down_exps.weight", "blk.11.ffn_down.weight"]
    assert [n for n in names if re.search(pattern, n)] == ["blk.1.ffn_down.weight"]
    status, out, _ = export(superweights, saved, "llama.cpp", "--verdict", "all")
    assert out.split() == ["--tensor-type", "blk\\.1\\.ffn_down\\.weight=f16", "--tensor-type", "blk\\.0\\.ffn_down\\.weight=f16"]


@pytest.mark.parametrize("fmt", ["bitsandbytes", "llm-compressor"])
def test_module_lists_name_the_transformers_modules(superweights, saved, fmt):
    """`llm_int8_skip_modules` and `ignore` take module names: the state-dict name less `.weight`."""
    assert json.loads(export(superweights, saved, fmt)[1]) == ["model.layers.1.mlp.down_proj"]
    everything = json.loads(export(superweights, saved, fmt, "--verdict", "all")[1])
    assert everything == ["model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj"]


def test_the_restore_file_holds_each_scalar_at_its_stored_index_with_its_shape(superweights, saved):
    status, out, _ = export(superweights, saved, "restore")
    document = json.loads(out)
    assert (document["format"], document["version"]) == ("superweights-restore", 1)
    assert document["model"] == {"source": "org/tiny-llama", "repo_id": "org/tiny-llama", "revision": "0123abcd", "fingerprint": None}
    (scalar,) = document["scalars"]
    assert (scalar["param"], scalar["tensor_shape"], scalar["tensor_index"]) == ("model.layers.1.mlp.down_proj.weight", [64, 160], [17, 23])
    assert scalar["value"] == -8.000000476837158 and scalar["verdict"] == "confirmed"  # the float32 value, exactly


def test_a_model_without_super_weights_gets_an_empty_list_and_is_told_so(superweights, catalog_url):
    Catalog(catalog_url).save(sample_result(confirmed=()), **times())
    status, out, err = export(superweights, catalog_url, "llama.cpp")
    assert (status, out) == (0, "")
    assert err == "org/tiny-llama: its latest scan has no confirmed super weight; the keep list is empty (nothing to hold out).\n"
    assert json.loads(export(superweights, catalog_url, "bitsandbytes")[1]) == []
    assert json.loads(export(superweights, catalog_url, "restore")[1])["scalars"] == []


def test_a_scan_without_tensor_shapes_gets_no_restore_file(superweights, catalog_url):
    result = sample_result()
    for weight in result.super_weights:
        weight.tensor_shape = None  # as catalogued before revision 0004
    Catalog(catalog_url).save(result, **times())
    status, out, err = export(superweights, catalog_url, "restore")
    assert (status, out) == (1, "")
    assert err == ("error: org/tiny-llama: its scan did not record the shape of model.layers.1.mlp.down_proj.weight "
                   "(scanned before superweights kept shapes); scan it again for a restore file.\n")
    assert export(superweights, catalog_url, "llama.cpp")[0] == 0  # the names need no shape


def test_export_reads_the_catalog_without_writing_it(superweights, tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).save(sample_result(), **times())
    before = (tmp_path / "catalog.db").read_bytes()
    assert export(superweights, url, "restore")[0] == 0
    assert (tmp_path / "catalog.db").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["catalog.db"]
    status, out, err = export(superweights, f"sqlite:///{tmp_path / 'none.db'}", "llama.cpp")
    assert status == 1 and err.count("\n") == 1 and "no such database file" in err and not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("args,message", [
    (("export",), "error: export: give either --parquet DIR, or --keep-list FORMAT and a MODEL.\n"),
    (("export", "org/tiny-llama"), "error: export: give either --parquet DIR, or --keep-list FORMAT and a MODEL.\n"),
    (("export", "--keep-list", "restore"), "error: export: give either --parquet DIR, or --keep-list FORMAT and a MODEL.\n"),
    (("export", "--keep-list", "gptq", "m"), None),
    (("export", "--keep-list", "restore", "org/tiny-llama", "--check-gguf", "{gguf}"),
     "error: --check-gguf: checks llama.cpp tensor names; use it with --keep-list llama.cpp.\n"),
    (("export", "--keep-list", "restore", "org/nothing"), None),
    (("export", "--keep-list", "llama.cpp", "org/tiny-llama", "--check-gguf", "{gguf}"), None),  # four bytes, not a GGUF file
    (("export", "--keep-list", "llama.cpp", "org/tiny-llama", "--check-gguf", "{other}"),
     "error: {other}: has no tensor blk.1.ffn_down.weight; is it a GGUF of this model?\n"),
])
def test_bad_arguments_are_one_line(superweights, saved, tmp_path, args, message):
    gguf, other = tmp_path / "x.gguf", tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    write_gguf(other, {"blk.0.ffn_down.weight": (4, 6)})
    status, out, err = superweights(*(a.format(gguf=gguf, other=other) for a in args), "--db", saved)
    assert status != 0 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
    if message:
        assert err == message.format(other=other)


def test_a_model_whose_scans_all_failed_has_no_keep_list(superweights, catalog_url):
    Catalog(catalog_url).record_failure(source="org/broken", repo_id="org/broken", revision="r1", config_hash="c0ffee", config={},
                                        error="out of memory", **times())
    status, out, err = export(superweights, catalog_url, "llama.cpp", model="org/broken")
    assert (status, out) == (1, "") and err.startswith("error: org/broken: every scan of it in the catalog") and err.count("\n") == 1


def test_a_tensor_llama_cpp_has_no_name_for_is_refused(superweights, catalog_url):
    result = sample_result()
    for weight in result.super_weights:
        weight.param = weight.param.replace("model.layers.", "model.decoder.layers.").replace("mlp.down_proj", "fc2")  # OPT
    Catalog(catalog_url).save(result, **times())
    status, out, err = export(superweights, catalog_url, "llama.cpp")
    assert (status, out) == (1, "") and err == (
        "error: org/tiny-llama: model.decoder.layers.1.fc2.weight has no GGUF tensor name in llama.cpp's table (the gguf package); "
        "use --keep-list restore, or upgrade gguf.\n")
    assert json.loads(export(superweights, catalog_url, "bitsandbytes")[1]) == ["model.decoder.layers.1.fc2"]


def write_gguf(path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A GGUF file of zero tensors, written by the `gguf` package (llama.cpp's own writer)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])  # longer than the arrays kept: skipped
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    finish(writer)


def test_read_tensor_names_reads_what_gguf_writes(tmp_path):
    import gguf

    path = tmp_path / "m.gguf"
    write_gguf(path, {"token_embd.weight": (8, 4), "blk.0.ffn_down.weight": (4, 6), "blk.1.ffn_down_exps.weight": (3, 4, 6)})
    assert read_tensor_names(path) == ["token_embd.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down_exps.weight"]
    assert read_tensor_names(path) == [t.name for t in gguf.GGUFReader(path).tensors]


KINDS = ["llama", "gpt2", "gpt_oss", "gemma3", "phi", "gpt_neox", "mixtral", "deepseek_v3"]
# llama.cpp's architecture of each, where it is not the model type
LOADER_ARCH = {"gpt_neox": "gptneox", "mixtral": "llama", "deepseek_v3": "deepseek2", "phi": "phi2", "gemma3": "gemma3"}


def test_names_are_compared_from_the_block_on():
    """Nemotron-H's Hub checkpoints store `backbone.layers.N.mixer.down_proj` (llama.cpp's table has
    that), transformers renames it `model.layers.N...` on load; a multimodal wrapper adds a prefix."""
    from catalog.gguf_names import gguf_name

    assert gguf_name("model.layers.3.mixer.down_proj.weight", 3) == "blk.3.ffn_down.weight"
    assert gguf_name("model.language_model.layers.3.mlp.down_proj.weight", 3) == "blk.3.ffn_down.weight"
    assert gguf_name("model.layers.3.mlp.shared_experts.down_proj.weight", 3) == "blk.3.ffn_down_shexp.weight"
    assert gguf_name("model.decoder.layers.3.fc2.weight", 3) is None  # OPT: llama.cpp has no such model


def test_the_names_kept_in_the_cache_are_llama_cpps_table_and_a_bad_cache_is_read_past(tmp_path, monkeypatch):
    """The cache holds what the gguf package's table says; a cut or garbled cache file is ignored."""
    from catalog import gguf_names

    monkeypatch.setenv("SUPERWEIGHTS_HOME", str(tmp_path))
    for garbage in (None, "[[\"layers.{bid}.mlp", "{}"):
        gguf_names.block_table.cache_clear()
        gguf_names._by_block_tail.cache_clear()
        if garbage is not None:
            gguf_names._cache_file().write_text(garbage)
        assert gguf_names.gguf_name("model.layers.11.mlp.down_proj.weight", 11) == "blk.11.ffn_down.weight"
        assert gguf_names.block_table() == gguf_names._read_table()
        assert [tuple(pair) for pair in json.loads(gguf_names._cache_file().read_text())] == gguf_names._read_table()
    gguf_names.block_table.cache_clear()
    gguf_names._by_block_tail.cache_clear()


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_names_are_the_ones_transformers_reads_gguf_files_by(superweights, tiny, zipf_text, catalog_url, kind):
    """Scanned, catalogued and exported: each tensor's llama.cpp name is the GGUF tensor that
    transformers' GGUF loader puts into that parameter (its map from llama.cpp's architecture)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    from catalog.scanner import scan

    planted = tiny(kind, effect=True, inert=True)
    result = scan(str(planted.path), ScanOptions(device="cpu", verify=False, eval_text=zipf_text))
    Catalog(catalog_url).save(result, **times())
    status, out, err = export(superweights, catalog_url, "llama.cpp", "--verdict", "all", model=str(planted.path))
    assert status == 0, err
    exported = [re.sub(r"\\(.)", r"\1", arg.split("=")[0]) for arg in out.split()[1::2]]
    model = AutoModelForCausalLM.from_pretrained(planted.path)
    text = model.get_decoder() if kind == "gemma3" else model  # the language model, as the converter writes it
    hf_of = get_gguf_hf_weights_map(text, TensorProcessor(), model_type=LOADER_ARCH.get(kind), num_layers=text.config.num_hidden_layers)
    prefix = "model.language_model." if kind == "gemma3" else ""
    loaded = {prefix + hf_of.get(name, hf_of.get(name.removesuffix(".weight"), "?")) for name in exported}  # fused experts: no `.weight`
    assert loaded == {w.param for w in result.super_weights}


@pytest.mark.integration
def test_smollm2_keep_lists_name_tensors_of_the_real_gguf(superweights, smollm2_gguf, catalog_url, tmp_path):
    """The scan of the real GGUF: its super weight's tensor is the file's blk.11.ffn_down.weight;
    `--check-gguf` of a split copy's second part checks the whole model's tensors."""
    from catalog.scanner import scan

    result = scan(str(smollm2_gguf), ScanOptions(device="cpu", verify=False))
    Catalog(catalog_url).save(result, **times())
    model = str(smollm2_gguf.resolve())
    status, out, err = export(superweights, catalog_url, "llama.cpp", "--verdict", "all", "--check-gguf", str(smollm2_gguf), model=model)
    assert status == 0, err
    second = split_copy(smollm2_gguf, tmp_path / smollm2_gguf.name, 100)[1]  # its blk.11 tensors are in part 1
    status, again, err = export(superweights, catalog_url, "llama.cpp", "--verdict", "all", "--check-gguf", str(second), model=model)
    assert (status, again) == (0, out), err
    tensors = read_tensor_names(smollm2_gguf)
    assert read_tensor_names(second) == tensors
    names = [re.sub(r"\\(.)", r"\1", arg.split("=")[0]) for arg in out.split()[1::2]]
    assert names[0] == "blk.11.ffn_down.weight" and set(names) <= set(tensors)
    assert [n for n in tensors if re.search(out.split()[1].split("=")[0], n)] == ["blk.11.ffn_down.weight"]
    modules = json.loads(export(superweights, catalog_url, "bitsandbytes", "--verdict", "all", model=model)[1])
    assert modules[0] == "model.layers.11.mlp.down_proj"
    scalar = json.loads(export(superweights, catalog_url, "restore", "--verdict", "all", model=model)[1])["scalars"][0]
    assert (scalar["tensor_shape"], scalar["tensor_index"]) == ([576, 1536], [507, 1229])
