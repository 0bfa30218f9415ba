"""`superweights survey` on a real two-node Ray cluster (ray.cluster_utils.Cluster, loopback only).

Models come from a Hub-layout offline cache (HF_HOME, HF_HUB_OFFLINE=1) that reaches the Ray
workers only through the driver's runtime_env, as it would on a real cluster. Run inside a network
namespace: `tests/isolated.sh .venv/bin/python -m pytest tests/test_survey.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub_server import HubServer
from superweights_cli import run_cli
from tiny import add_to_hub_cache, write_zipf_text

pytestmark = pytest.mark.ray

GOOD = {"org/tiny-llama": "llama", "org/tiny-gpt2": "gpt2", "org/tiny-llama-2": "llama"}
BROKEN = "org/tiny-broken"  # a Llama whose safetensors file is cut in half
MISSING = "org/not-cached"  # not in the offline cache: fails in the download stage


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny) -> dict[str, str]:
    """HF_HOME with three good tiny models and a corrupt one; returns repo id -> revision."""
    root = tmp_path_factory.mktemp("hub")
    revisions = {}
    for seed, (repo_id, kind) in enumerate({**GOOD, BROKEN: "llama"}.items()):
        revisions[repo_id] = add_to_hub_cache(root / "hf", repo_id, tiny(kind, effect=True, seed=seed).path)
    weights = next((root / "hf" / "hub" / "models--org--tiny-broken" / "snapshots").glob("*/model.safetensors")).resolve()
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the blob the snapshot links to
    return {"HF_HOME": str(root / "hf"), **revisions}


@pytest.fixture(scope="module")
def cluster(hub):
    """Two Ray nodes of one CPU each; the HF environment reaches workers via the driver's runtime_env."""
    import ray
    from ray.cluster_utils import Cluster

    from workers.driver import start_ray

    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    with pytest.MonkeyPatch.context() as env:  # set after the nodes started: only runtime_env carries it
        env.setenv("HF_HOME", hub["HF_HOME"])
        env.setenv("HF_HUB_OFFLINE", "1")
        start_ray(cluster.address)
        yield cluster
        ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def catalog(tmp_path):
    from db.repository import Catalog

    return Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    from catalog.config import ScanOptions

    zipf = write_zipf_text(tmp_path_factory.mktemp("eval") / "zipf.txt")  # the causal checks' text, offline
    return ScanOptions(device="cpu", eval_text=zipf, eval_tokens=512, seq_len=64)


def rows_by_source(catalog) -> dict[str, list]:
    rows: dict[str, list] = {}
    for scan in catalog.scans():
        rows.setdefault(scan.source, []).append(scan)
    return rows


def test_scanner_runs_locally_without_ray(hub, options, monkeypatch):
    """The scan stage is a plain callable class: fetch one model, scan it, get a result."""
    from huggingface_hub import constants

    from workers.tasks import Scanner, fetch

    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(hub["HF_HOME"], "hub"))  # read at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fetched = fetch("org/tiny-llama")
    outcome = Scanner(options)(fetched)
    assert fetched.source.revision == hub["org/tiny-llama"]
    assert outcome.error is None
    assert [(w.layer, w.row, w.col) for w in outcome.result.super_weights][:1] == [(1, 17, 23)]
    broken = Scanner(options)(fetch(BROKEN))
    assert broken.result is None and "corrupt" in broken.error


def test_survey_on_two_nodes_records_every_model_and_skips_them_next_time(cluster, hub, catalog, options):
    from workers.discovery import from_specs
    from workers.driver import Survey

    specs = [*GOOD, BROKEN, MISSING]
    summary = Survey(catalog, options).run(from_specs(specs))
    print_summary(summary)

    status = {r.spec: r.status for r in summary.rows}
    assert status == {**dict.fromkeys(GOOD, "scanned"), BROKEN: "failed", MISSING: "failed"}
    assert summary.workers == 2 and len({r.node for r in summary.rows if r.node}) == 2  # both nodes scanned
    rows = rows_by_source(catalog)
    assert {s: [r.status for r in rs] for s, rs in rows.items()} == {**dict.fromkeys(GOOD, ["ok"]), BROKEN: ["failed"], MISSING: ["failed"]}
    assert all(rows[s][0].revision == hub[s] for s in GOOD)
    assert "corrupt" in rows[BROKEN][0].error and "HF_HUB_OFFLINE" in rows[MISSING][0].error
    assert all(any(w.row == 17 and w.col == 23 for w in rows[s][0].result.super_weights) for s in GOOD)

    # Started again (after an interruption, or the next night), through the CLI: nothing is rescanned.
    again = survey_cli(cluster, hub, catalog, options, *GOOD, MISSING)
    print(again.stderr)
    assert again.returncode == 0
    assert "Survey: 0 scanned, 1 failed, 3 skipped" in again.stderr
    assert all(f"{s}: already in the catalog at {hub[s][:12]}; skipped" in again.stderr for s in GOOD)
    assert {s: len(rs) for s, rs in rows_by_source(catalog).items()} == dict.fromkeys(specs, 1)


def test_a_survey_scans_a_directory_once_however_its_path_is_typed(cluster, catalog, options, tiny, tmp_path, monkeypatch):
    from workers.discovery import from_specs
    from workers.driver import Survey

    shutil.copytree(tiny("llama", effect=True).path, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    summary = Survey(catalog, options).run(from_specs(["./m", "m", str(tmp_path / "m")]))
    assert [(r.spec, r.status) for r in summary.rows] == [(str(tmp_path / "m"), "scanned")]
    assert list(rows_by_source(catalog)) == [str(tmp_path / "m")]


def test_a_survey_in_which_every_model_failed_exits_non_zero(cluster, hub, catalog, options):
    run = survey_cli(cluster, hub, catalog, options, MISSING, "org/also-not-cached")
    assert run.returncode == 1, run.stderr
    assert "Survey: 0 scanned, 2 failed, 0 skipped" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: all 2 models of the survey failed; the error column above says why for each."


def survey_cli(cluster, hub, catalog, options, *models: str) -> subprocess.CompletedProcess:
    """`superweights survey` in its own process, as a second driver on the running cluster."""
    args = ["--ray-address", cluster.address, "--db", catalog.url, "--device", "cpu", "--eval-text", str(options.eval_text),
            "--eval-tokens", str(options.eval_tokens), "--seq-len", str(options.seq_len)]
    return run_cli("survey", *models, *args, env={"HF_HOME": hub["HF_HOME"], "HF_HUB_OFFLINE": "1"}, timeout=120)


def print_summary(summary) -> None:
    from rich.console import Console

    from workers.cli import summary_table

    Console(width=160).print(summary_table(summary))


GATED = "org/tiny-gpt2"  # its first scan waits until the test kills the worker


def test_worker_killed_mid_scan_is_retried_and_every_model_recorded_once(cluster, catalog, options, tmp_path, caplog):
    from workers.discovery import from_specs
    from workers.driver import Survey, SurveySettings
    from workers.tasks import Scanner

    class Gated(Scanner):
        gate = str(tmp_path)

        def __call__(self, fetched):
            gate = Path(self.gate)
            if fetched.spec == GATED and not (gate / "pid").exists():
                (gate / "pid.tmp").write_text(str(os.getpid()))
                (gate / "pid.tmp").rename(gate / "pid")  # the test waits for this file, then kills us
                while not (gate / "open").exists():
                    time.sleep(0.1)
            return super().__call__(fetched)

    specs = ["org/tiny-llama", GATED, "org/tiny-llama-2"]
    survey = Survey(catalog, options, SurveySettings(retries=2), scanner=Gated)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", survey.run(from_specs(specs))))
    with caplog.at_level(logging.INFO, logger="superweights.survey"):
        runner.start()
        pid_file = tmp_path / "pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-scan, as under the OOM killer
        runner.join(timeout=150)
    assert not runner.is_alive()
    summary = result["summary"]
    print_summary(summary)
    print("\n".join(r.getMessage() for r in caplog.records))

    assert {r.spec: (r.status, r.attempts) for r in summary.rows} == {
        "org/tiny-llama": ("scanned", 1), GATED: ("scanned", 2), "org/tiny-llama-2": ("scanned", 1)}
    assert {s: [r.status for r in rs] for s, rs in rows_by_source(catalog).items()} == dict.fromkeys(specs, ["ok"])
    assert any(f"worker pid {pid} died mid-scan (attempt 1 of 3); retrying" in r.getMessage() for r in caplog.records)


def test_scan_past_timeout_is_killed_and_recorded_as_failed(cluster, catalog, options):
    from workers.discovery import from_specs
    from workers.driver import Survey, SurveySettings
    from workers.tasks import Scanner

    class Hung(Scanner):
        def __call__(self, fetched):
            time.sleep(3600)  # as a scan stuck in a driver call or a dead NFS mount would

    survey = Survey(catalog, options, SurveySettings(timeout=3, workers=1), scanner=Hung)
    summary = survey.run(from_specs(["org/tiny-llama"]))
    print_summary(summary)
    [row] = summary.rows
    assert (row.status, row.attempts) == ("failed", 1) and "timed out after 3s" in row.error
    assert [r.status for r in rows_by_source(catalog)["org/tiny-llama"]] == ["failed"]


def test_hub_discovery_lists_text_generation_models_and_skips_known_revisions(hub, catalog, options, monkeypatch):
    """`list_models` against the loopback stand-in of the Hub (`hub_server`): the query sent, the shas read,
    and a model catalogued at the listed sha skipped before any download (no Ray needed)."""
    from huggingface_hub import HfApi, constants

    from workers.discovery import Candidate, HubQuery, discover
    from workers.driver import Survey, SurveySettings

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the "Hub" is on loopback
    with HubServer() as server:
        for repo_id, downloads in (("org/tiny-llama", 42), ("org/tiny-gpt2", 7)):
            snapshot = Path(hub["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / hub[repo_id]
            server.add(repo_id, snapshot, hub[repo_id], downloads)
        found = discover(HubQuery("tiny", author="org", sort="last_modified", limit=2), api=HfApi(endpoint=server.url))
    [query] = server.queries
    assert {k: query[k] for k in ("search", "author", "pipeline_tag", "filter", "sort", "limit")} == {
        "search": ["tiny"], "author": ["org"], "pipeline_tag": ["text-generation"], "filter": ["transformers"],
        "sort": ["lastModified"], "limit": ["2"]}
    assert "sha" in query["expand"]
    assert found == [Candidate("org/tiny-llama", hub["org/tiny-llama"], 42), Candidate("org/tiny-gpt2", hub["org/tiny-gpt2"], 7)]

    now = datetime.now(UTC)
    for c in found:  # both failed before at these revisions; --skip-failed skips them without downloading
        catalog.record_failure(source=c.spec, repo_id=c.spec, revision=c.revision, config_hash=options.config_hash(),
                               config=options.to_config(), error="gated", started_at=now, finished_at=now)
    summary = Survey(catalog, options, SurveySettings(skip_failed=True)).run(found)
    assert [(r.spec, r.status) for r in summary.rows] == [("org/tiny-llama", "skipped"), ("org/tiny-gpt2", "skipped")]


def test_interrupted_survey_started_again_scans_only_what_is_left(cluster, catalog, options):
    """Ctrl-C after the first save: that scan is kept; the next run skips it and scans the rest, once each."""
    from workers.discovery import from_specs
    from workers.driver import Survey

    def interrupt_after_first(counts):
        if counts.scanned == 1:  # Ctrl-C as the first save is reported: what SIGINT raises, with no race
            raise KeyboardInterrupt

    first = Survey(catalog, options, on_update=interrupt_after_first).run(from_specs(list(GOOD)))
    print_summary(first)
    assert first.interrupted
    [done] = [r.spec for r in first.rows if r.status == "scanned"]
    assert list(rows_by_source(catalog)) == [done]

    second = Survey(catalog, options).run(from_specs(list(GOOD)))
    print_summary(second)
    assert {r.spec: r.status for r in second.rows} == {**dict.fromkeys(GOOD, "scanned"), done: "skipped"}
    assert {s: [r.status for r in rs] for s, rs in rows_by_source(catalog).items()} == dict.fromkeys(GOOD, ["ok"])


def test_a_survey_whose_catalog_stays_locked_keeps_every_scan(cluster, options, tmp_path, monkeypatch, superweights):
    """Another process holds the catalog's write lock from the first scan on: every model is still
    scanned, each result kept in a file named in its row, and `db save` adds them all afterwards."""
    import sqlite3

    from catalog import settings
    from db import dbapi
    from db.repository import Catalog
    from workers.discovery import from_specs
    from workers.driver import Survey

    monkeypatch.setattr(dbapi, "BUSY_WAIT_S", 0.2)  # before the catalog's engine is made (30 s in use)
    path = tmp_path / "catalog.db"
    catalog = Catalog(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)

    def lock_when_scanning(counts):
        if counts.running and not other.in_transaction:
            other.execute("BEGIN EXCLUSIVE")

    summary = Survey(catalog, options, on_update=lock_when_scanning).run(from_specs(list(GOOD)))
    other.rollback()
    print_summary(summary)
    kept = sorted((settings.home() / "unsaved").glob("*.json"))
    assert {r.spec: r.status for r in summary.rows} == dict.fromkeys(GOOD, "failed") and len(kept) == len(GOOD)
    for row in summary.rows:
        assert row.error.startswith(f"catalog sqlite:///{path}: locked by another process"), row.error
        assert any(f"The scan is kept in {file}: `superweights db save {file}`" in row.error for file in kept)
    assert list(rows_by_source(catalog)) == []

    status, _, err = superweights("db", "save", *map(str, kept), "--db", f"sqlite:///{path}")
    assert status == 0, err
    rows = rows_by_source(catalog)
    assert {s: [r.status for r in rs] for s, rs in rows.items()} == dict.fromkeys(GOOD, ["ok"])
    assert all(any((w.row, w.col) == (17, 23) for w in rows[s][0].result.super_weights) for s in GOOD)
