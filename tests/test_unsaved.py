"""A finished scan is never lost to the catalog: when the catalog cannot take it (locked by another
process past the wait, unreachable, full), the scan is kept in a scan JSON file and the one error
line says where; `superweights db save FILE` adds it later, as `scan --no-save --json` files too."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db.reads import CatalogReader

from db_samples import sample_result, times


@pytest.fixture
def short_wait(monkeypatch):
    """SQLite waits this long for another process's lock before giving up (30 s in use)."""
    from db import dbapi

    monkeypatch.setattr(dbapi, "BUSY_WAIT_S", 0.2)


@contextmanager
def locked(path: Path):
    """Another process's write lock on the SQLite file, as a survey saving holds it."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.rollback()
        other.close()


def scan_ids(url: str) -> list[tuple[int, str, str]]:
    return [(s.scan_id, s.source, s.config_hash) for s in CatalogReader(url).scans()]


def test_a_scan_the_catalog_cannot_take_is_kept_and_db_save_adds_it(short_wait, tmp_path, superweights):
    from catalog import settings
    from catalog.result import ScanResult
    from db.cli import CatalogSink
    from db.errors import UnsavedScanError
    from db.repository import Catalog

    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    Catalog(url).save(sample_result("org/earlier"), **times())
    result = sample_result()
    result.started_at, result.finished_at = "2026-12-03T10:00:00+00:00", "2026-12-03T10:42:30.500000+00:00"
    with locked(path), pytest.raises(UnsavedScanError) as refused:
        CatalogSink().save(result, {"no_save": False, "db": url}, datetime.now(UTC))
    kept = refused.value.kept
    assert str(refused.value).startswith(f"catalog {url}: locked by another process")
    assert f"The scan is kept in {kept}: `superweights db save {kept}`" in str(refused.value)
    assert kept.parent == settings.home() / "unsaved"
    assert ScanResult.from_json(kept) == result
    assert [source for _, source, _ in scan_ids(url)] == ["org/earlier"]  # nothing half-written

    status, _, err = superweights("db", "save", str(kept), "--db", url)
    assert status == 0, err
    assert f"saved {kept} as scan 2 to {url}" in err
    [scan] = [s for s in CatalogReader(url).scans() if s.source == "org/tiny-llama"]
    assert (scan.started_at.isoformat(), scan.finished_at.isoformat()) == (result.started_at, result.finished_at)
    assert scan.result.super_weights == result.super_weights and scan.result.ablations == result.ablations
    status, _, err = superweights("db", "save", str(kept), "--db", url)  # the same scan again: replaced, not doubled
    assert status == 0, err
    assert sorted(source for _, source, _ in scan_ids(url)) == ["org/earlier", "org/tiny-llama"]


def test_db_save_reads_every_file_before_saving_any(tmp_path, superweights):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    good = tmp_path / "good.json"
    sample_result().to_json(good)
    older = tmp_path / "older.json"
    older.write_text(json.dumps(json.loads(good.read_text()) | {"schema": 1}))
    text = tmp_path / "notes.json"
    text.write_text("not json")
    for bad, says in [(older, "unsupported scan schema 1 (expected 2)"), (text, "cannot read it as JSON")]:
        status, _, err = superweights("db", "save", str(good), str(bad), "--db", url)
        assert status == 1 and len(err.strip().splitlines()) == 1
        assert err.startswith(f"error: {bad}: not a scan JSON this version can save ({says}")
        assert err.strip().endswith("give a file written by `superweights scan --json`.")
    assert not (tmp_path / "catalog.db").exists()  # the catalog was not even opened
    status, _, err = superweights("db", "save", str(good), "--db", url)
    assert status == 0, err
    assert scan_ids(url) == [(1, "org/tiny-llama", "c0ffee0123456789")]


def _edited(data: dict, where: str, value: object) -> dict:
    """`data` (a scan's dict) with the value at `where` ("super_weights.0.layer") replaced."""
    *path, last = where.split(".")
    target = data
    for key in path:
        target = target[int(key) if key.isdigit() else key]
    target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("where,value,says", [
    ("super_weights.0.layer", "1", "super_weights[0].layer is '1', not a 64-bit integer"),
    ("super_weights.0.layer", 10**30, f"super_weights[0].layer is {10**30}, not a 64-bit integer"),
    ("super_weights.0.expert", True, "super_weights[0].expert is True, not a 64-bit integer or null"),
    ("super_weights.0.verdict", "maybe", "super_weights[0].verdict 'maybe' is none of confirmed, rejected, inconclusive, untested"),
    ("super_weights.1", None, "super_weights[1] is NoneType, not an object"),
    ("super_weights.0.tensor_index", [1, "2"], "super_weights[0].tensor_index is [1, '2'], not a list (a 64-bit integer each)"),
    ("layers", {"0": {}}, "layers is dict, not a list"),
    ("model.num_layers", 4.5, "model.num_layers is 4.5, not a 64-bit integer"),
    ("ablations.0.kind", "mystery", "ablations[0].kind 'mystery' is none of"),
    ("config", [], "config is [], not an object"),
])
def test_a_scan_file_edited_out_of_its_types_is_refused_naming_the_field(tmp_path, superweights, where, value, says):
    """SQLite stores what it is given (text in an integer column, a bool as 1): a file is checked
    field by field before a catalog sees it."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edited(sample_result().to_dict(), where, value)))
    status, _, err = superweights("db", "save", str(bad), "--db", f"sqlite:///{tmp_path / 'catalog.db'}")
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {bad}: not a scan JSON this version can save ({says}"), err
    assert not (tmp_path / "catalog.db").exists()


def test_a_candidate_listed_twice_is_refused(tmp_path, superweights):
    """100000 copies of one row would be saved as 100000 super weights."""
    data = sample_result().to_dict()
    data["super_weights"].append(dict(data["super_weights"][0]))
    bad = tmp_path / "twice.json"
    bad.write_text(json.dumps(data))
    status, _, err = superweights("db", "save", str(bad), "--db", f"sqlite:///{tmp_path / 'catalog.db'}")
    assert status == 1
    assert "(super_weights[2] lists model.layers.1.mlp.down_proj.weight[17, 23] a second time)" in err


@pytest.mark.parametrize("where,value,says", [
    ("super_weights.0.layer", 2**40, f"super_weights[0].layer is {2**40}, past its column's 32-bit integers"),
    ("model.source", "org/" + "x" * 2000, "model.source is 2004 characters, more than its column's 1024"),
    ("model.architecture", "A" * 300, "model.architecture is 300 characters, more than its column's 255"),
])
def test_what_one_catalog_would_keep_and_another_refuse_is_refused_by_both(catalog_url, superweights, tmp_path, where, value, says):
    """SQLite keeps a string past its column's length and an integer past 32 bits; PostgreSQL refuses
    them: the same file is refused by either, before anything is written."""
    from db.repository import Catalog

    Catalog(catalog_url).save(sample_result("org/earlier"), **times())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edited(sample_result().to_dict(), where, value)))
    status, _, err = superweights("db", "save", str(bad), "--db", catalog_url)
    assert status == 1 and len(err.strip().splitlines()) == 1, err
    assert f"({says}); nothing was written." in err
    assert [source for _, source, _ in scan_ids(catalog_url)] == ["org/earlier"]


def test_a_catalog_locked_past_the_wait_is_said_to_be_so(short_wait, tmp_path, superweights):
    from db.repository import Catalog

    path = tmp_path / "catalog.db"
    Catalog(f"sqlite:///{path}").save(sample_result(), **times())
    with locked(path):
        status, _, err = superweights("show", "org/tiny-llama", "--db", f"sqlite:///{path}")
    assert status == 1
    assert err.strip() == (f"error: catalog sqlite:///{path}: locked by another process for over 0.2 s (a survey or scan saving, "
                           "a long query). Try again once it is done.")


def test_a_json_file_that_cannot_be_written_at_the_end_still_leaves_the_scan_saved(tiny, tmp_path):
    """`--json /dev/full`: writable when the scan starts, full when it ends. The scan is saved, then
    the command fails on the file, in one line."""
    from superweights_cli import run_cli

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    run = run_cli("scan", str(tiny("llama").path), "--no-verify", "--device", "cpu", "--db", url, "--json", "/dev/full")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-2:] == [
        f"saved scan 1 to {url}", "error: --json: cannot write /dev/full (No space left on device); choose a writable path."]
    assert [source for _, source, _ in scan_ids(url)] == [str(tiny("llama").path)]
