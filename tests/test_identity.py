"""A model is who it is: named by what its files declare, identified by a fingerprint of its
weights, never by the path it was read from.

Catalog identity runs on tiny planted checkpoints scanned in-process (`--no-verify`: the checks
have their own tests); what a GGUF declares runs on the real SmolLM2 file, and a Hub repo of GGUF
files on an offline HF_HOME cache laid out as huggingface_hub lays it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from catalog import fingerprint as fingerprint_module
from catalog.errors import BadOptionError, SourceNotFoundError
from catalog.fingerprint import file_sha256, fingerprint
from catalog.gguf_meta import _string, _unpack, _value
from catalog.identity import FROM_FILE_NAME, FROM_GGUF, gguf_identity
from catalog.sources import resolve, with_gguf
from db.reads import CatalogReader
from db.repository import Catalog

from gguf_files import split_copy, write_gguf
from hub_server import HubServer
from superweights_cli import isolated_env, one_line_error, run_cli
from tiny import add_to_hub_cache

SCAN = ["scan", "--no-verify", "--device", "cpu"]
REPO = "org/smollm2-gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models(url: str) -> list[tuple[str, str | None]]:
    """(source, revision) of each catalog model that has a scan, oldest first."""
    seen = {(s.source, s.revision): s.scan_id for s in CatalogReader(url).scans()}
    return sorted(seen, key=seen.get)


# -- local sources: one model however the path is typed, two when the weights differ --------------


def test_one_directory_however_typed_is_one_model(superweights, tiny, tmp_path, monkeypatch):
    shutil.copytree(tiny("llama", effect=True).path, tmp_path / "m")
    (tmp_path / "renamed").symlink_to(tmp_path / "m")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    monkeypatch.chdir(tmp_path)
    for spec in ("./m", "m", str(tmp_path / "m"), "renamed"):
        status, _, err = superweights(*SCAN, spec, "--db", url)
        assert status == 0, err
    weights = sha256(tmp_path / "m" / "model.safetensors")
    assert models(url) == [(str(tmp_path / "m"), f"sha256:{weights[:12]}")]
    status, _, err = superweights(*SCAN, "renamed", "--db", url, "--skip-existing")
    assert status == 0 and "already in the catalog" in err and "saved" not in err


def test_scan_dot_in_two_directories_is_two_models(superweights, tiny, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    for name, seed in (("a", 0), ("b", 1)):
        shutil.copytree(tiny("llama", effect=True, seed=seed).path, tmp_path / name)
        monkeypatch.chdir(tmp_path / name)
        status, _, err = superweights(*SCAN, ".", "--db", url)
        assert status == 0, err
    assert [source for source, _ in models(url)] == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_show_finds_a_local_model_however_its_path_is_typed(superweights, tiny, tmp_path, monkeypatch):
    """`show .` inside the directory and `show ./m` beside it: the source the scan recorded."""
    shutil.copytree(tiny("llama", effect=True).path, tmp_path / "m")
    shutil.copytree(tiny("llama", effect=True, seed=1).path, tmp_path / "mm")  # `m` is part of its name too
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    monkeypatch.chdir(tmp_path)
    for spec in ("m", "mm"):
        assert superweights(*SCAN, spec, "--db", url)[0] == 0
    for where, spec in ((tmp_path, "./m"), (tmp_path, "m/"), (tmp_path / "m", ".")):
        monkeypatch.chdir(where)
        status, out, err = superweights("show", spec, "--db", url)
        assert status == 0, err
        assert str(tmp_path / "m") in out and str(tmp_path / "mm") not in out


def test_other_weights_under_a_catalogued_path_are_a_new_revision(superweights, tiny, tmp_path):
    model, url = tmp_path / "m", f"sqlite:///{tmp_path / 'catalog.db'}"
    shutil.copytree(tiny("llama", effect=True).path, model)
    assert superweights(*SCAN, str(model), "--db", url)[0] == 0
    first = sha256(model / "model.safetensors")
    shutil.copyfile(tiny("llama", effect=True, seed=1).path / "model.safetensors", model / "model.safetensors")
    status, _, err = superweights(*SCAN, str(model), "--db", url)
    second = sha256(model / "model.safetensors")
    assert status == 0, err
    assert f"{model}: the weights differ from those catalogued under this name ({model}@sha256:{first[:12]}); " \
           f"saved as a new revision sha256:{second[:12]}" in " ".join(err.split())
    assert models(url) == [(str(model), f"sha256:{first[:12]}"), (str(model), f"sha256:{second[:12]}")]
    fingerprints = {s.revision: s.result.model.fingerprint for s in CatalogReader(url).scans()}
    assert fingerprints == {f"sha256:{first[:12]}": first, f"sha256:{second[:12]}": second}


def test_a_local_row_from_before_fingerprints_is_adopted_by_its_next_scan(superweights, tiny, tmp_path):
    """A catalog written before fingerprints has local rows without one (revision NULL)."""
    from db_samples import sample_result, times

    model, url = tiny("llama", effect=True).path, f"sqlite:///{tmp_path / 'catalog.db'}"
    old = sample_result(str(model), revision=None)
    Catalog(url).save(old, **times())
    assert superweights(*SCAN, str(model), "--db", url)[0] == 0
    assert models(url) == [(str(model), f"sha256:{sha256(model / 'model.safetensors')[:12]}")]


# -- fingerprints ------------------------------------------------------------------------------------


def test_a_file_in_the_hub_cache_is_fingerprinted_by_its_blob_name_without_reading_it(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    named = blobs / ("ab" * 32)  # not the sha256 of its contents: shows the name is taken, the bytes unread
    named.write_bytes(b"weights")
    (tmp_path / "model.gguf").symlink_to(named)
    assert file_sha256(tmp_path / "model.gguf") == "ab" * 32
    shutil.copyfile(named, tmp_path / "copy.gguf")
    assert file_sha256(tmp_path / "copy.gguf") == hashlib.sha256(b"weights").hexdigest()


def test_shards_are_fingerprinted_by_their_sha256s_in_order(tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    for file, data in zip(files, (b"one", b"two")):
        file.write_bytes(data)
    lines = "".join(f"{hashlib.sha256(d).hexdigest()}\n" for d in (b"one", b"two"))
    assert fingerprint(files, threads=2) == hashlib.sha256(lines.encode()).hexdigest()
    assert fingerprint(files[:1]) == hashlib.sha256(b"one").hexdigest()
    with pytest.raises(ValueError, match="no weight files"):  # else every weightless source would share one fingerprint
        fingerprint([])


@pytest.fixture
def hashes(monkeypatch):
    """The files actually read and hashed (not taken from the cache), in order."""
    read: list[str] = []
    real = fingerprint_module.hash_file

    def counting(path):
        read.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(fingerprint_module, "hash_file", counting)
    monkeypatch.setattr(fingerprint_module, "SETTLED_NS", 20_000_000)  # 20 ms, not 2 s: see `written`
    return read


def written(path: Path, data: bytes) -> None:
    """`data` written to `path` and settled: `hashes` caches a file changed 20 ms or more before it is hashed."""
    path.write_bytes(data)
    time.sleep(0.05)


def test_an_unchanged_file_is_hashed_once_and_a_changed_one_again(tmp_path, hashes):
    shard = tmp_path / "model.safetensors"
    written(shard, b"weights one")
    assert file_sha256(shard) == file_sha256(shard) == hashlib.sha256(b"weights one").hexdigest()
    assert hashes == ["model.safetensors"]  # the second scan read the cache
    stat = shard.stat()
    written(shard, b"weights two")  # same size, mtime put back: the ctime still tells
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(shard) == hashlib.sha256(b"weights two").hexdigest()
    replaced = tmp_path / "new"
    written(replaced, b"weights six")
    os.replace(replaced, shard)  # renamed over: another inode
    assert file_sha256(shard) == hashlib.sha256(b"weights six").hexdigest()
    assert len(hashes) == 3


def test_a_file_written_just_now_is_not_cached(tmp_path):
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(b"still being written")
    file_sha256(shard)
    assert not any(fingerprint_module.cache_dir().glob("*.json"))  # a write in the same timestamp tick would go unseen


@pytest.mark.parametrize("damage", ["garbage", "wrong types", "another digest shape", "unwritable"])
def test_a_corrupt_or_unwritable_cache_never_fails_or_fools_a_fingerprint(tmp_path, hashes, damage):
    shard = tmp_path / "model.safetensors"
    written(shard, b"weights")
    right = hashlib.sha256(b"weights").hexdigest()
    if damage == "unwritable":  # a file where the cache folder should be: even root cannot write there
        fingerprint_module.cache_dir().parent.mkdir(parents=True)
        fingerprint_module.cache_dir().write_text("not a folder")
    else:
        file_sha256(shard)
        (entry,) = fingerprint_module.cache_dir().glob("*.json")
        cached = json.loads(entry.read_text())
        entry.write_text({"garbage": "\x00{not json", "wrong types": json.dumps({**cached, "stat": [1, 2]}),
                          "another digest shape": json.dumps({**cached, "sha256": "../../etc"})}[damage])
    assert file_sha256(shard) == right
    assert file_sha256(shard) == right


def test_local_shards_keep_their_fingerprint_with_the_cache(tmp_path, hashes):
    files = [tmp_path / "a", tmp_path / "b"]
    for file, data in zip(files, (b"one", b"two")):
        written(file, data)
    first = fingerprint(files)
    assert fingerprint(files) == first == hashlib.sha256("".join(f"{hashlib.sha256(d).hexdigest()}\n"
                                                                 for d in (b"one", b"two")).encode()).hexdigest()
    assert sorted(hashes) == ["a", "b"]


# -- GGUF: what the file declares ---------------------------------------------------------------------


def test_the_smollm2_gguf_declares_its_name_organization_size_license_and_file_type(smollm2_gguf):
    me = gguf_identity(smollm2_gguf)
    assert (me.name, me.named_from, me.organization, me.basename, me.size_label, me.license, me.quantization) == (
        "Smollm2 135M 8k Lc100K Mix1 Ep2", FROM_GGUF, "HuggingFaceTB", "smollm2", "135M", "apache-2.0", "Q4_1")


def test_a_name_longer_than_a_catalog_column_is_cut_marked_so(smollm2_gguf):
    """A file may declare a name of any length; the catalog's columns hold 255 characters, and a
    scan whose facts do not fit would be one that no catalog takes."""
    me = gguf_identity(smollm2_gguf, metadata={"general.name": "n" * 1000, "general.license": "l" * 300,
                                               "general.organization": "HuggingFaceTB"})
    assert (me.name, me.license, me.organization) == ("n" * 254 + "…", "l" * 254 + "…", "HuggingFaceTB")


def without_general_keys(source: Path, target: Path) -> Path:
    """A copy of a GGUF file without its `general.*` keys but `general.architecture`, which
    transformers needs to read it at all: the key-value section rewritten, tensor infos and data
    copied, the data start padded to the file's 32-byte alignment again."""
    with open(source, "rb") as f:
        version, tensors, count = struct.unpack("<IQQ", f.read(24)[4:])
        kept = []
        for _ in range(count):
            start = f.tell()
            key = _string(f)
            _value(f, _unpack(f, "<I"))
            end = f.tell()
            if not key.startswith("general.") or key == "general.architecture":
                f.seek(start)
                kept.append(f.read(end - start))
        infos_start = f.tell()
        for _ in range(tensors):
            _string(f)
            f.seek(8 * _unpack(f, "<I") + 12, os.SEEK_CUR)  # its dims, then type and offset
        infos_end = f.tell()
        f.seek(infos_start)
        infos = f.read(infos_end - infos_start)
        f.seek(-(-infos_end // 32) * 32)  # the data start: aligned to 32 bytes
        data = f.read()
    body = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kept)) + b"".join(kept) + infos
    target.write_bytes(body + b"\0" * (-len(body) % 32) + data)
    return target


@pytest.mark.integration
def test_a_gguf_without_general_keys_scans_named_after_its_file(smollm2_gguf, tmp_path):
    bare = without_general_keys(smollm2_gguf, tmp_path / "SmolLM2-bare.Q4_1.gguf")
    assert gguf_identity(bare).named_from == FROM_FILE_NAME
    out = tmp_path / "scan.json"
    run = run_cli(*SCAN, str(bare), "--no-save", "--json", str(out), env=isolated_env(tmp_path / "env"))
    assert run.returncode == 0, run.stderr
    model = json.loads(out.read_text())["model"]
    assert (model["name"], model["named_from"], model["organization"], model["quantization"], model["family"]) == (
        "SmolLM2-bare.Q4_1.gguf", "file name", None, "Q4_1", "SmolLM2")
    assert model["fingerprint"] == sha256(bare)
    layers = json.loads(out.read_text())["super_weights"]
    assert (layers[0]["layer"], layers[0]["row"], layers[0]["col"]) == (11, 507, 1229)  # the same weights


# -- a Hub repo of GGUF files, offline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_repo(smollm2_gguf, tmp_path_factory) -> Path:
    """REPO's files: two GGUF files (the real Q4_1 and a stand-in Q8_0) and a card."""
    files = tmp_path_factory.mktemp("gguf-files")
    shutil.copyfile(smollm2_gguf, files / SMOLLM2_FILE)
    (files / "SmolLM2-135M-Instruct.Q8_0.gguf").write_bytes(b"GGUF not this one")
    (files / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n")
    return files


@pytest.fixture(scope="module")
def gguf_hub(gguf_repo, tmp_path_factory) -> tuple[dict[str, str], str]:
    """HF_HOME caching REPO."""
    env = isolated_env(tmp_path_factory.mktemp("gguf-hub"))
    return env, add_to_hub_cache(Path(env["HF_HOME"]), REPO, gguf_repo)


@pytest.fixture
def in_gguf_hub(gguf_hub, monkeypatch) -> str:
    """This process reads the `gguf_hub` cache (huggingface_hub read HF_HOME at import); its commit sha."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(Path(gguf_hub[0]["HF_HOME"]) / "hub"))
    return gguf_hub[1]


@pytest.mark.parametrize("spec", [f"{REPO}:Q4_1", f"{REPO}:q4_1", f"{REPO}:{SMOLLM2_FILE}", with_gguf(REPO, "Q4_1")])
def test_one_gguf_file_of_a_hub_repo_resolves_from_the_cache_pinned(in_gguf_hub, smollm2_gguf, spec):
    sha = in_gguf_hub
    resolved = resolve(spec)
    assert (resolved.source, resolved.repo_id, resolved.revision, resolved.format, resolved.gguf_file) == (
        f"{REPO}:{SMOLLM2_FILE}", REPO, sha, "gguf", SMOLLM2_FILE)
    assert resolved.fingerprint == sha256(smollm2_gguf)  # the blob's name: the same as the local file's


def test_a_quantization_the_repo_lacks_names_the_files_it_has(in_gguf_hub):
    with pytest.raises(SourceNotFoundError, match="no GGUF file in the HF_HOME cache .* matches 'Q5_K_M'; its GGUF files: "
                                                  r"SmolLM2-135M-Instruct\.Q4_1\.gguf, SmolLM2-135M-Instruct\.Q8_0\.gguf"):
        resolve(f"{REPO}:Q5_K_M")


def test_gguf_option_is_for_hub_repos(tmp_path):
    with pytest.raises(BadOptionError, match="--gguf"):
        with_gguf(str(tmp_path), "Q4_1")


@pytest.mark.parametrize("spec", [f"{REPO}:", f"{REPO}: ", with_gguf(REPO, ""), f"{REPO}:@main"])
def test_a_colon_with_no_gguf_file_after_it_is_refused_not_the_whole_repo(in_gguf_hub, spec):
    with pytest.raises(BadOptionError, match=f"names no GGUF file; .* {REPO}:Q4_K_M"):
        resolve(spec)


@pytest.mark.integration
def test_scan_of_a_hub_gguf_records_the_repo_the_file_and_what_it_declares(gguf_hub, smollm2_gguf, tmp_path):
    env, sha = gguf_hub
    out = tmp_path / "scan.json"
    run = run_cli(*SCAN, REPO, "--gguf", "Q4_1", "--no-save", "--json", str(out), env=env)
    assert run.returncode == 0, run.stderr
    model = json.loads(out.read_text())["model"]
    assert (model["source"], model["repo_id"], model["revision"], model["quantization"], model["name"], model["organization"]) == (
        f"{REPO}:{SMOLLM2_FILE}", REPO, sha, "Q4_1", "Smollm2 135M 8k Lc100K Mix1 Ep2", "HuggingFaceTB")
    assert (model["license"], model["fingerprint"]) == ("apache-2.0", sha256(smollm2_gguf))


@pytest.mark.integration
def test_one_gguf_file_is_downloaded_from_the_hub_and_scanned_at_the_commit_served(gguf_repo, smollm2_gguf, tmp_path):
    """Online (the loopback Hub at HF_ENDPOINT): `REPO:Q4_1` lists the repo's files at its commit and
    downloads only the card and that file, not the repo's other GGUF files; a quantization the repo
    lacks is one line naming the files it has there."""
    with HubServer() as hub:
        sha = hub.add(REPO, gguf_repo)
        env = isolated_env(tmp_path / "env") | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        out = tmp_path / "scan.json"
        run = run_cli(*SCAN, f"{REPO}:Q4_1", "--no-save", "--json", str(out), env=env)
        missing = run_cli(*SCAN, f"{REPO}:Q5_K_M", "--no-save", env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert (result["model"]["source"], result["model"]["revision"], result["model"]["fingerprint"]) == (
        f"{REPO}:{SMOLLM2_FILE}", sha, sha256(smollm2_gguf))
    assert [(w["layer"], w["row"], w["col"]) for w in result["super_weights"]][:1] == [(11, 507, 1229)]
    assert {t.file for t in hub.transfers} == {"README.md", SMOLLM2_FILE}
    line = one_line_error(missing)
    assert "no GGUF file in the repo matches 'Q5_K_M'" in line and "SmolLM2-135M-Instruct.Q8_0.gguf" in line


@pytest.mark.integration
def test_a_split_gguf_of_a_hub_repo_downloads_every_part_and_only_those(smollm2_gguf, tmp_path):
    """A large model's GGUF on the Hub comes in parts (`Q4_1/NAME-00001-of-00003.gguf`, ...), which a
    quantization tag matches together: all of them are downloaded, not the repo's other files; a
    repo lacking one of them says which."""
    files = tmp_path / "files"
    (files / "Q4_1").mkdir(parents=True)
    parts = [f"Q4_1/{p.name}" for p in split_copy(smollm2_gguf, files / "Q4_1" / SMOLLM2_FILE, 100)]
    (files / "SmolLM2-135M-Instruct.Q8_0.gguf").write_bytes(b"GGUF not this one")
    (files / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    partial = tmp_path / "partial"
    shutil.copytree(files, partial)
    (partial / parts[2]).unlink()
    with HubServer() as hub:
        sha = hub.add(REPO, files)
        hub.add("org/partial", partial)
        env = isolated_env(tmp_path / "env") | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        out = tmp_path / "scan.json"
        run = run_cli(*SCAN, f"{REPO}:Q4_1", "--no-save", "--json", str(out), env=env)
        lacking = run_cli(*SCAN, "org/partial:Q4_1", "--no-save", env=env)
    assert f"The repo has no {parts[2]} at commit" in one_line_error(lacking)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert (result["model"]["source"], result["model"]["revision"], result["model"]["quantization"]) == (f"{REPO}:{parts[0]}", sha, "Q4_1")
    assert [(w["layer"], w["row"], w["col"]) for w in result["super_weights"]][:1] == [(11, 507, 1229)]
    assert sorted(t.file for t in hub.transfers if t.repo == REPO) == sorted(["README.md", *parts])


def test_a_part_missing_from_the_offline_cache_is_named(tmp_path, monkeypatch):
    """Offline, a split model cached but for one part: that part is named, not the repo."""
    files = tmp_path / "files"
    files.mkdir()
    write_gguf(files / "m.gguf", "llama", split=8)
    (files / "m-00003-of-00003.gguf").unlink()
    home = tmp_path / "hf"
    add_to_hub_cache(home, "org/split", files)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(home / "hub"))
    with pytest.raises(SourceNotFoundError, match="HF_HUB_OFFLINE is set and m-00003-of-00003.gguf is not in the HF_HOME cache"):
        resolve("org/split:m-00002-of-00003.gguf")


def test_a_file_missing_from_the_offline_cache_is_one_line(gguf_hub, tmp_path):
    run = run_cli(*SCAN, "org/elsewhere:Q4_1", "--no-save", env=gguf_hub[0])
    line = one_line_error(run)
    assert "org/elsewhere:Q4_1" in line and "HF_HUB_OFFLINE" in line


# -- published pages -----------------------------------------------------------------------------------


def test_published_pages_carry_no_local_paths(superweights, tiny, tmp_path):
    """A catalog of a local checkpoint, and of a broken one whose error names its path: no file
    of the site (pages, downloads, search-index.js) holds the directory they were read from."""
    model, broken, url = tmp_path / "models" / "m", tmp_path / "models" / "broken", f"sqlite:///{tmp_path / 'catalog.db'}"
    shutil.copytree(tiny("llama", effect=True).path, model)
    shutil.copytree(model, broken)
    (broken / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    assert superweights(*SCAN, str(model), "--db", url)[0] == 0
    status, _, err = superweights(*SCAN, str(broken), "--db", url)
    assert status == 1 and str(broken) in err
    from datetime import UTC, datetime

    Catalog(url).record_failure(source=str(broken), repo_id=None, revision=None, config_hash="c0ffee", config={},
                                error=err.strip().removeprefix("error: "), started_at=datetime.now(UTC), finished_at=datetime.now(UTC))
    site = tmp_path / "site"
    assert superweights("report", "--db", url, "--out", str(site))[0] == 0
    files = [p for p in site.rglob("*") if p.is_file()]
    assert site / "search-index.js" in files and len(files) > 10
    leaks = [p for p in files if str(tmp_path).encode() in p.read_bytes()]
    assert leaks == []
    index = (site / "index.html").read_text()
    assert "broken: cannot load the checkpoint" in index and ">m<" in index
