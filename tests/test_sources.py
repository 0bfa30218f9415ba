"""The Hub path as a user runs it: `superweights scan org/name[@rev]` offline, over an HF_HOME cache
laid out as huggingface_hub lays it out, with HF_HUB_OFFLINE=1 and nothing patched; and online,
against the loopback stand-in of the Hub (`hub_server`), what the Hub refuses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from catalog.sources import resolve

from hub_server import HubServer
from superweights_cli import isolated_env, one_line_error, run_many
from tiny import add_to_hub_cache

REPO = "org/tiny-llama"
SCAN = ["scan", "--no-verify", "--no-save", "--device", "cpu"]


@pytest.fixture(scope="module")
def hub(tiny, tmp_path_factory):
    """An isolated environment whose HF_HOME caches REPO at one commit; returns (env, sha, planted)."""
    env = isolated_env(tmp_path_factory.mktemp("hub-env"))
    planted = tiny("llama")
    sha = add_to_hub_cache(Path(env["HF_HOME"]), REPO, planted.path)
    return env, sha, planted


@pytest.fixture(scope="module")
def runs(hub, tmp_path_factory):
    env, sha, _ = hub
    out = tmp_path_factory.mktemp("out")
    commands = {
        "latest": [REPO],
        "pinned": [f"{REPO}@{sha}"],
        "unknown_repo": ["org/not-cached"],
        "unknown_revision": [f"{REPO}@{'0' * 40}"],
    }
    results = run_many({name: [*SCAN, *args, "--json", str(out / f"{name}.json")] for name, args in commands.items()}, env)
    return results, out


@pytest.mark.parametrize("name", ["latest", "pinned"])
def test_scan_of_a_cached_repo_records_the_commit_it_scanned(hub, runs, name):
    _, sha, planted = hub
    results, out = runs
    assert results[name].returncode == 0, results[name].stderr
    model = json.loads((out / f"{name}.json").read_text())["model"]
    assert (model["repo_id"], model["revision"], model["format"]) == (REPO, sha, "safetensors")
    weights = json.loads((out / f"{name}.json").read_text())["super_weights"]
    assert [(w["layer"], w["row"], w["col"]) for w in weights] == [(planted.layer, planted.row, planted.col)]


def test_unknown_repo_offline_says_how_to_get_it(runs):
    results, out = runs
    line = one_line_error(results["unknown_repo"])
    assert "org/not-cached" in line and "HF_HUB_OFFLINE" in line
    assert not list(out.glob("unknown_repo.json*"))


def test_revision_not_in_the_offline_cache_is_a_clear_error(runs):
    results, out = runs
    line = one_line_error(results["unknown_revision"])
    assert f"{REPO}@{'0' * 40}" in line and f"revision '{'0' * 40}' is not in the HF_HOME cache" in line
    assert not list(out.glob("unknown_revision.json*"))


@pytest.fixture(scope="module")
def refused(hub, tmp_path_factory):
    """Online scans the Hub refuses: a gated repo, a repo it does not have, a revision the repo lacks."""
    _, _, planted = hub
    out = tmp_path_factory.mktemp("refused")
    with HubServer() as server:
        server.add("org/gated", planted.path, gated=True)
        server.add(REPO, planted.path)
        env = isolated_env(tmp_path_factory.mktemp("online")) | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url}
        commands = {"gated": ["org/gated"], "unknown_repo": ["org/no-such-model"], "unknown_revision": [f"{REPO}@v9"]}
        results = run_many({name: [*SCAN, *args, "--json", str(out / f"{name}.json")] for name, args in commands.items()}, env)
        return results, out, [t.repo for t in server.transfers]


@pytest.mark.parametrize("name,says", [
    ("gated", ("org/gated", "gated repo", "Accept its license on the Hub", "HF_TOKEN")),
    ("unknown_repo", ("org/no-such-model", "no such Hub repo", "set HF_TOKEN")),
    ("unknown_revision", (f"{REPO}@v9", "the repo has no revision 'v9'", "give a branch, tag or commit sha")),
])
def test_what_the_hub_refuses_is_one_line_naming_the_fix(refused, name, says):
    results, out, transferred = refused
    line = one_line_error(results[name])
    assert all(part in line for part in says), line
    assert not list(out.glob(f"{name}.json*")) and "org/gated" not in transferred


def test_local_directory_has_no_repo_and_a_revision_named_by_its_weights(tiny):
    resolved = resolve(str(tiny("llama").path))
    weights = hashlib.sha256((tiny("llama").path / "model.safetensors").read_bytes()).hexdigest()
    assert (resolved.format, resolved.repo_id, resolved.fingerprint) == ("safetensors", None, weights)
    assert resolved.revision == f"sha256:{weights[:12]}"


def test_a_pickle_checkpoint_is_its_weights_not_the_trainers_files_beside_them(tiny, tmp_path):
    """A Trainer's output directory holds training_args.bin (and optimizer.bin) beside
    pytorch_model.bin: they are not weights, and a new run's would name the same weights anew."""
    import torch
    from safetensors.torch import load_file

    path = Path(shutil.copytree(tiny("llama").path, tmp_path / "trained"))
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    before = resolve(str(path), allow_pickle=True)
    torch.save({"learning_rate": 1e-4}, path / "training_args.bin")
    after = resolve(str(path), allow_pickle=True)
    weights = hashlib.sha256((path / "pytorch_model.bin").read_bytes()).hexdigest()
    assert after.weight_files() == [path / "pytorch_model.bin"]
    assert before.fingerprint == after.fingerprint == weights


@pytest.mark.parametrize("spec", ["./missing-dir", "missing.gguf", "not a repo id", "org/name/extra"])
def test_what_is_neither_a_path_nor_a_repo_id_is_not_looked_up_on_the_hub(spec, tmp_path, monkeypatch):
    from catalog.errors import SourceNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFoundError, match="Give an existing checkpoint directory"):
        resolve(spec)


def _crowd(checkpoint: Path, folder: Path, shards: int = 1) -> Path:
    """`checkpoint` as Hub repos ship one: its weights (in `shards` files with an index, or
    model.safetensors), and beside them other copies that transformers does not load: a variant,
    Mistral's consolidated file, an adapter, a training copy in a subfolder, pickle weights."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(shutil.copytree(checkpoint, folder))
    weights = load_file(path / "model.safetensors")
    if shards > 1:
        (path / "model.safetensors").unlink()
        names = sorted(weights)
        files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        weight_map = {name: files[i * shards // len(names)] for i, name in enumerate(names)}
        for file in files:
            save_file({n: weights[n] for n, f in weight_map.items() if f == file}, path / file, metadata={"format": "pt"})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({n: w.half() for n, w in weights.items()}, path / "model.fp16.safetensors", metadata={"format": "pt"})
    save_file({f"mistral.{n}": w for n, w in weights.items()}, path / "consolidated.safetensors")
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)}, path / "adapter_model.safetensors")
    (path / "checkpoint-500").mkdir()
    save_file({n: w + 1 for n, w in weights.items()}, path / "checkpoint-500" / "model.safetensors")
    torch.save(weights, path / "pytorch_model.bin")
    return path


def _files(path: Path, names: list[str]) -> list[Path]:
    return [path / name for name in names]


@pytest.mark.parametrize("shards", [1, 2])
def test_a_checkpoint_is_the_weights_transformers_loads_not_the_copies_beside_them(tiny, tmp_path, shards):
    """The same weights are one revision however many variants, adapters and copies lie beside them."""
    from catalog.sources import checkpoint_shards

    base = tiny("llama").path
    bare, crowded = _crowd(base, tmp_path / "bare", shards), _crowd(base, tmp_path / "crowded", shards)
    for extra in ["model.fp16.safetensors", "consolidated.safetensors", "adapter_model.safetensors", "checkpoint-500",
                  "pytorch_model.bin"]:
        target = bare / extra
        target.unlink() if target.is_file() else shutil.rmtree(target)
    weights = sorted(p.name for p in bare.glob("*.safetensors"))
    assert checkpoint_shards(crowded) == _files(crowded, weights)
    assert resolve(str(crowded), allow_pickle=True).fingerprint == resolve(str(bare)).fingerprint


def test_a_hub_scan_downloads_only_the_weights_it_reads(tiny, tmp_path):
    """A repo shipping its weights twice (Mistral's consolidated.safetensors beside the shards, a
    fp16 variant, both safetensors and pickle) costs one download of them, not every copy."""
    planted = tiny("llama")
    out = tmp_path
    with HubServer() as server:
        served = {"org/one-file": _crowd(planted.path, tmp_path / "one"), "org/sharded": _crowd(planted.path, tmp_path / "two", 2)}
        hostile = _crowd(planted.path, tmp_path / "hostile", 2)
        (hostile / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "../../../../x"}}))
        for repo_id, folder in {**served, "org/hostile": hostile}.items():
            server.add(repo_id, folder)
        env = isolated_env(tmp_path / "env") | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url}
        results = run_many({repo_id: [*SCAN, "--allow-pickle", repo_id, "--json", str(out / f"{repo_id[4:]}.json")]
                            for repo_id in [*served, "org/hostile"]}, env)
        transfers = server.transfers
    line = one_line_error(results["org/hostile"])
    assert "names '../../../../x', which is not a file of the checkpoint directory" in line, line
    assert not [t for t in transfers if t.repo == "org/hostile" and t.file.endswith((".safetensors", ".bin"))]
    for repo_id in served:
        assert results[repo_id].returncode == 0, results[repo_id].stderr
        weights = sorted(t.file for t in transfers if t.repo == repo_id and t.file.endswith((".safetensors", ".bin")))
        expected = ["model.safetensors"] if repo_id == "org/one-file" else ["model-00001-of-00002.safetensors",
                                                                            "model-00002-of-00002.safetensors"]
        assert weights == expected
        scanned = json.loads((out / f"{repo_id[4:]}.json").read_text())
        assert [(w["layer"], w["row"], w["col"]) for w in scanned["super_weights"]] == [(planted.layer, planted.row, planted.col)]
