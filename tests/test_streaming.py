"""Layer streaming (`--max-gpu-memory`): the same scan as in memory, two blocks at a time."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoModelForCausalLM

from catalog import streaming, zoo
from catalog.config import ScanOptions, VerifyOptions
from catalog.errors import BadOptionError
from catalog.options import parse_size
from catalog.reader import index_shards
from catalog.scanner import scan, scan_source
from catalog.sources import resolve

from tiny import build_tokenizer

BUDGET = 1 << 30


@pytest.fixture(scope="module")
def sharded(tiny, tmp_path_factory):
    """The planted tiny Llama saved again in several safetensors shards."""
    planted = tiny("llama", effect=True, inert=True)
    path = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(planted.path).save_pretrained(path, max_shard_size="100KB")
    for extra in planted.path.glob("*token*"):
        (path / extra.name).write_bytes(extra.read_bytes())
    assert len(list(path.glob("*.safetensors"))) > 2
    return path


def options(text, early_stop: bool = True, **kw) -> ScanOptions:
    checks = VerifyOptions(quant_check=True, early_stop=early_stop)
    return ScanOptions(device="cpu", eval_text=text, eval_tokens=1024, seq_len=64, checks=checks, **kw)


@pytest.fixture(scope="module")
def scans(tiny, sharded, zipf_text):
    """The `--full-eval` scan in memory (both layouts hold the same weights), and per layout the
    streamed scan with the shard store it read through."""
    single = tiny("llama", effect=True, inert=True).path
    plain = scan(str(single), options(zipf_text, early_stop=False))
    streamed = {}
    stores = []
    original = streaming.ShardStore.open.__func__

    def recording(cls, *args):
        stores.append(original(cls, *args))
        return stores[-1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming.ShardStore, "open", classmethod(recording))
        for layout, path in (("single", single), ("sharded", sharded)):
            streamed[layout] = (scan(str(path), options(zipf_text, max_gpu_memory=BUDGET)), stores[-1])
    return plain, streamed


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_streamed_scan_equals_the_scan_in_memory(layout, scans):
    """The streamed pass carries every window: early stopping (the default) is off there, and the
    scan's config and results are those of `--full-eval` in memory."""
    plain, streamed = scans[0], scans[1][layout][0]
    assert streamed.config_hash == plain.config_hash
    assert "early_stop" not in streamed.config and streamed.summary["evaluation"]["early_stop"] is False
    assert [dataclasses.astuple(r) for r in streamed.layers] == [dataclasses.astuple(r) for r in plain.layers]
    assert [(w.param, w.row, w.col, w.iteration, w.verdict) for w in streamed.super_weights] == \
           [(w.param, w.row, w.col, w.iteration, w.verdict) for w in plain.super_weights]
    assert any(w.verdict == "confirmed" for w in plain.super_weights)
    for ours, theirs in zip(streamed.super_weights, plain.super_weights, strict=True):
        assert ours.ppl_ratio == pytest.approx(theirs.ppl_ratio, rel=1e-5)
    assert [a.name for a in streamed.ablations] == [a.name for a in plain.ablations]
    assert any(a.name.startswith("int4") for a in streamed.ablations)
    for ours, theirs in zip(streamed.ablations, plain.ablations, strict=True):
        assert (ours.ppl, ours.tokens, ours.detail) == (pytest.approx(theirs.ppl, rel=1e-5), theirs.tokens, theirs.detail)


def test_at_most_two_blocks_are_resident(tiny, scans):
    """Counted by the store itself: block bytes read onto the device and not yet released."""
    spans = index_shards([tiny("llama", effect=True, inert=True).path / "model.safetensors"])
    layers = {name.split(".")[2] for name in spans if name.startswith("model.layers.")}
    block = max(sum(s.nbytes for n, s in spans.items() if n.startswith(f"model.layers.{i}.")) for i in layers)
    for _, store in scans[1].values():
        assert block <= store.peak <= 2 * block
        assert store.resident == 0


def test_a_checkpoint_transformers_converts_is_one_line(tiny, zipf_text):
    with pytest.raises(BadOptionError, match=r"--max-gpu-memory: .*streaming needs a safetensors checkpoint .*converts on load"):
        scan(str(tiny("mixtral").path), options(zipf_text, max_gpu_memory=BUDGET))


def test_gpt2_streams_to_the_in_memory_result(tiny, zipf_text):
    """Blocks found by structure stream too: GPT-2's Conv1D blocks, called one at a time."""
    path = str(tiny("gpt2", effect=True).path)
    streamed, plain = (scan(path, options(zipf_text, max_gpu_memory=budget)) for budget in (BUDGET, None))
    assert [(w.layer, w.row, w.col, w.verdict) for w in streamed.super_weights] == [
        (w.layer, w.row, w.col, w.verdict) for w in plain.super_weights]


def test_a_model_without_attention_heads_is_one_line(tiny, zipf_text):
    """The budget counts attention scores by head: RWKV's config names none."""
    with pytest.raises(BadOptionError, match=r"--max-gpu-memory: .* not a model whose config names no num_attention_heads"):
        scan(str(tiny("rwkv").path), options(zipf_text, max_gpu_memory=BUDGET))


def test_blocks_sharing_a_weight_are_one_line(tmp_path, zipf_text):
    """A streamed block's weights are read for that block alone: Zamba2's shared block holds one for several."""
    from catalog import zoo

    from tiny import build_tokenizer

    zoo.build("zamba2").save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(BadOptionError, match=r"--max-gpu-memory: .* not blocks that share a down projection's weight \(model\.layers\.2\."):
        scan(str(tmp_path), options(zipf_text, max_gpu_memory=BUDGET))


def test_gguf_is_one_line(smollm2_gguf, zipf_text):
    with pytest.raises(BadOptionError, match=r"--max-gpu-memory: .*streaming needs a safetensors checkpoint .* not a gguf file"):
        scan(str(smollm2_gguf), options(zipf_text, max_gpu_memory=BUDGET))


def test_a_budget_verification_cannot_keep_is_refused_with_one_that_it_keeps(tiny, zipf_text):
    """Past the weights, verification holds every condition's hidden states and the head's logits:
    a budget with room for the weights alone is refused naming the smallest that works, and that one
    scans to the in-memory result."""
    import re

    path = str(tiny("llama").path)
    with pytest.raises(BadOptionError, match="needs at least") as weights_only:
        scan(path, options(zipf_text, max_gpu_memory=1000))
    weights = parse_size(re.search(r"needs at least (\S+ \S+)", str(weights_only.value))[1])
    with pytest.raises(BadOptionError, match=r"verifying \d+ conditions .* use --max-gpu-memory (\d+MiB)") as refused:
        scan(path, options(zipf_text, max_gpu_memory=int(weights * 1.02)))
    works = parse_size(re.search(r"--max-gpu-memory (\d+MiB)", str(refused.value))[1])
    streamed, plain = (scan(path, options(zipf_text, early_stop=False, max_gpu_memory=budget)) for budget in (works, None))
    assert [(w.layer, w.row, w.col, w.verdict) for w in streamed.super_weights] == [
        (w.layer, w.row, w.col, w.verdict) for w in plain.super_weights]
    assert [round(a.ppl, 4) for a in streamed.ablations] == [round(a.ppl, 4) for a in plain.ablations]


def test_budget_below_two_blocks_is_refused(tiny, zipf_text):
    with pytest.raises(BadOptionError, match="needs at least"):
        scan(str(tiny("llama").path), options(zipf_text, max_gpu_memory=1000))


@pytest.mark.parametrize("text,size", [("4GiB", 4 << 30), ("500MB", 500_000_000), ("2.5 gb", 2_500_000_000), ("123", 123)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "0GB", "-1GB"])
def test_bad_size_is_one_line(text):
    with pytest.raises(BadOptionError, match="--max-gpu-memory: "):
        parse_size(text)


# Types whose blocks return a tuple the model takes apart (`outputs[0]`): refused before, as
# "invalid index of a 0-dim tensor"; and types whose blocks pass state on, which a streamed pass
# cannot give them: Zaya returns its router states to the next block, Gemma 3n's blocks write
# keys and values into a dict the later blocks read (it streamed, to other maxima from block 2 on).
TUPLES = {"falcon", "mpt", "gpt_neo", "openai-gpt"}
HANDS_ON = {"zaya": "block 1 is handed what block 0 returns besides its hidden states",
            "gemma3n_text": "block 0 writes into its shared_kv_states argument"}


@pytest.mark.parametrize("model_type", zoo.causal_lm_types())
def test_every_type_streams_to_the_detection_in_memory_or_is_refused_in_one_line(model_type, tmp_path):
    """Each causal-LM type of the installed transformers, saved tiny: streamed, its detection is
    the one in memory (every layer's maxima, every candidate), or it is refused with one line."""
    path = tmp_path / model_type
    kwargs = {"device": "cpu", "dtype": "float32", "verify": False}
    try:
        zoo.build(model_type).save_pretrained(path)
        build_tokenizer().save_pretrained(path)
        plain = scan_source(resolve(str(path)), ScanOptions(**kwargs))
    except Exception as exc:
        pytest.skip(f"{model_type} does not scan in memory: {type(exc).__name__}: {str(exc)[:120]}")
    try:
        streamed = scan_source(resolve(str(path)), ScanOptions(**kwargs, max_gpu_memory=BUDGET))
    except BadOptionError as exc:
        assert model_type not in TUPLES
        assert str(exc).startswith("--max-gpu-memory: ") and "\n" not in str(exc) and "scan it without --max-gpu-memory" in str(exc)
        assert HANDS_ON.get(model_type, "") in str(exc)
        return
    assert model_type not in HANDS_ON
    assert [dataclasses.astuple(layer) for layer in streamed.layers] == [dataclasses.astuple(layer) for layer in plain.layers]
    assert [(w.layer, w.row, w.col) for w in streamed.super_weights] == [(w.layer, w.row, w.col) for w in plain.super_weights]
