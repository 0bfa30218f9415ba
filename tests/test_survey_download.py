"""A survey that downloads: `superweights survey` against a loopback stand-in of the Hub
(`hub_server.HubServer`, reached through HF_ENDPOINT), so the real huggingface_hub client resolves
revisions, lists files and downloads them into the HF_HOME cache on the Ray workers. Run inside a
network namespace: `tests/isolated.sh .venv/bin/python -m pytest tests/test_survey_download.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import test_survey
from hub_server import HubServer
from test_survey import print_summary, rows_by_source

catalog, options = test_survey.catalog, test_survey.options  # the survey tests' fixtures

pytestmark = pytest.mark.ray

LATEST = {"org/tiny-llama": "llama", "org/tiny-gpt2": "gpt2"}  # surveyed at `main`
PINNED = "org/tiny-llama-2"  # surveyed at its commit sha, given up front
ABSENT = "org/not-on-the-hub"
GATED = "org/gated-llama"  # on the Hub, its files refused to this user


@pytest.fixture(scope="module")
def hub(tiny):
    with HubServer() as server:
        for seed, (repo_id, kind) in enumerate({**LATEST, PINNED: "llama"}.items()):
            server.add(repo_id, tiny(kind, effect=True, seed=seed).path)
        server.add(GATED, tiny("llama", effect=True).path, gated=True)
        yield server


@pytest.fixture(scope="module")
def hf_home(hub, tmp_path_factory):
    """A local Ray instance whose workers download from `hub` into a fresh HF_HOME (its path)."""
    import ray

    from workers.driver import start_ray

    home = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HOME", str(home))
        env.setenv("HF_ENDPOINT", hub.url)
        env.setenv("HF_HUB_OFFLINE", "0")
        start_ray(None, num_cpus=2, object_store_memory=80 * 2**20)
        yield home
        ray.shutdown()


def test_a_survey_downloads_each_model_once_into_the_hub_cache_and_catalogues_the_commit_served(hub, hf_home, catalog, options):
    from workers.discovery import from_specs
    from workers.driver import Survey

    specs = [*LATEST, f"{PINNED}@{hub.repos[PINNED].sha}", ABSENT, GATED]
    summary = Survey(catalog, options).run(from_specs(specs))
    print_summary(summary)

    assert {r.spec: r.status for r in summary.rows} == {**dict.fromkeys(specs[:3], "scanned"), ABSENT: "failed", GATED: "failed"}
    assert "no such Hub repo" in next(r.error for r in summary.rows if r.spec == ABSENT)
    assert "gated repo" in next(r.error for r in summary.rows if r.spec == GATED)
    rows = rows_by_source(catalog)
    for repo_id in [*LATEST, PINNED]:
        served = hub.repos[repo_id]
        [scan] = rows[repo_id]
        weights = served.files["model.safetensors"]
        assert (scan.status, scan.revision) == ("ok", served.sha)
        assert scan.result.model.fingerprint == weights.sha256  # the blob's name: nothing re-hashed
        cached = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
        snapshot = cached / "snapshots" / served.sha / "model.safetensors"
        assert snapshot.resolve() == cached / "blobs" / weights.sha256
        assert snapshot.read_bytes() == Path(weights.path).read_bytes()
        assert any(w.row == 17 and w.col == 23 for w in scan.result.super_weights)
    weight_bodies = sorted(t.repo for t in hub.transfers if t.file.endswith(".safetensors"))
    assert weight_bodies == sorted([*LATEST, PINNED])  # each weight file sent once, in full
    assert all(t.bytes == hub.repos[t.repo].files[t.file].size for t in hub.transfers)

    # The next night: the Hub still serves the same commits, so nothing is downloaded or rescanned.
    sent = len(hub.transfers)
    again = Survey(catalog, options).run(from_specs(specs))
    assert {r.spec: r.status for r in again.rows} == {**dict.fromkeys(specs[:3], "skipped"), ABSENT: "failed", GATED: "failed"}
    assert len(hub.transfers) == sent
    assert {s: len(r) for s, r in rows_by_source(catalog).items()} == {**dict.fromkeys([*LATEST, PINNED], 1), ABSENT: 1, GATED: 1}
