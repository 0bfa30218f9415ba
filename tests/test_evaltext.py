"""The evaluation text: its windows are the first tokens of the text as the whole text's tokenization gives
them; wikitext-2 comes from the Hub through `datasets` (here a loopback stand-in of it)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from transformers import AutoTokenizer

from catalog import evaltext
from catalog.evaltext import load_eval_text

from hub_server import HubServer
from superweights_cli import isolated_env, one_line_error, run_cli, run_many


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf):
    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.mark.parametrize("tokens,chars_per_token", [(1, 6), (100, 6), (4096, 6), (4096, 1), (10**7, 6)])
def test_windows_are_the_whole_texts_first_tokens(smollm2_tokenizer, eval_text, monkeypatch, tokens, chars_per_token):
    """Tokenizing a prefix of the text gives the ids that tokenizing all of it gives, up to `tokens`
    (all of them when the text is shorter); also when the first prefix is too short and grows."""
    monkeypatch.setattr(evaltext, "CHARS_PER_TOKEN", chars_per_token)
    text = load_eval_text(eval_text)
    whole = smollm2_tokenizer(text.text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert torch.equal(text.first_ids(smollm2_tokenizer, tokens), whole[:tokens])
    if tokens >= 100:
        seq_len = 50
        windows = text.windows(smollm2_tokenizer, tokens, seq_len)
        n = min(tokens, len(whole)) // seq_len
        assert torch.equal(windows, whole[: n * seq_len].reshape(n, seq_len))


def test_text_without_whitespace(smollm2_tokenizer, tmp_path):
    """A text with no space or line break is cut anywhere, and still matches (the margin covers the cut)."""
    path = tmp_path / "dense.txt"
    path.write_text("superweight" * 5000)
    text = load_eval_text(path)
    whole = smollm2_tokenizer(text.text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert torch.equal(text.first_ids(smollm2_tokenizer, 300), whole[:300])


# -- wikitext-2 from the Hub (`--eval-dataset wikitext2`), through a loopback stand-in of it ------

WIKITEXT_README = """---
configs:
- config_name: wikitext-2-raw-v1
  data_files:
  - split: test
    path: wikitext-2-raw-v1/test-*
  - split: train
    path: wikitext-2-raw-v1/train-*
  - split: validation
    path: wikitext-2-raw-v1/validation-*
---
"""


@pytest.fixture(scope="module")
def wikitext_hub(tmp_path_factory, zipf_text):
    """`Salesforce/wikitext` as the Hub serves it (README configs, one parquet file per split), its
    rows the Zipf text's lines as wikitext writes them (a leading space, blank rows between)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = zipf_text.read_text().splitlines()
    repo = tmp_path_factory.mktemp("wikitext")
    (repo / "README.md").write_text(WIKITEXT_README)
    (repo / "wikitext-2-raw-v1").mkdir()
    splits = {"test": lines[:200], "train": lines[200:230], "validation": lines[230:]}
    cells = {split: [cell for line in rows for cell in (f" {line} \n", "")] for split, rows in splits.items()}
    for split, column in cells.items():
        pq.write_table(pa.table({"text": column}), repo / "wikitext-2-raw-v1" / f"{split}-00000-of-00001.parquet")
    with HubServer() as hub:
        hub.add(evaltext.WIKITEXT[0], repo, dataset=True)
        yield hub, "\n\n".join(cells["test"])


def test_wikitext_is_downloaded_once_then_read_offline_and_scanned_as_its_text(wikitext_hub, tiny, tmp_path):
    """`--eval-dataset wikitext2` reads the test split through `datasets` from the Hub (here its
    stand-in at HF_ENDPOINT) into HF_HOME; offline afterwards it comes from that cache. The scan
    evaluates exactly the split's rows joined by blank lines: the same perplexities, verdict and
    text hash as `--eval-text` of that text written to a file. Offline with nothing cached it is
    one line naming the way out."""
    hub, text = wikitext_hub
    planted = tiny("llama", effect=True)
    joined = tmp_path / "wikitext-test.txt"
    joined.write_text(text)
    scan = ["scan", str(planted.path), "--no-save", "--device", "cpu", "--eval-tokens", "1024", "--seq-len", "128"]
    env = isolated_env(tmp_path / "env")
    online = env | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
    first = run_cli(*scan, "--eval-dataset", "wikitext2", "--json", str(tmp_path / "online.json"), env=online)
    assert first.returncode == 0, first.stderr
    runs = run_many({"offline": [*scan, "--eval-dataset", "wikitext2", "--json", str(tmp_path / "offline.json")],
                     "file": [*scan, "--eval-text", str(joined), "--json", str(tmp_path / "file.json")],
                     "uncached": [*scan, "--eval-dataset", "wikitext2"]},
                    env | {"HF_HUB_OFFLINE": "1"})
    runs["uncached"] = run_cli(*scan, "--eval-dataset", "wikitext2", env=isolated_env(tmp_path / "empty"))
    assert runs["offline"].returncode == 0 and runs["file"].returncode == 0, runs["offline"].stderr + runs["file"].stderr
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("online", "offline", "file")}
    assert {r["config"]["eval_text"] for name, r in results.items() if name != "file"} == {"wikitext-2-raw-v1/test"}
    assert {r["config"]["eval_sha256"] for r in results.values()} == {hashlib.sha256(text.encode()).hexdigest()}
    ablations = {name: [(a["name"], a["ppl"], a["tokens"]) for a in r["ablations"]] for name, r in results.items()}
    assert ablations["online"] == ablations["offline"] == ablations["file"]
    assert [w["verdict"] for w in results["online"]["super_weights"]] == ["confirmed"]
    assert any(t.file.endswith("test-00000-of-00001.parquet") for t in hub.transfers)
    line = one_line_error(runs["uncached"])
    assert "--eval-dataset" in line and "--eval-text FILE" in line
