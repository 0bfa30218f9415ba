"""The repository on SQLite and PostgreSQL: saves keyed by (source, revision, config hash),
atomic writes, faithful round trips, and the reads the CLI and the report use.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest

from catalog.errors import NonFiniteError
from catalog.result import Ablation, LayerStat, ModelInfo, ScanResult, SuperWeight
from db.errors import CatalogWriteError, UnknownModelError
from db.models import AblationRow, LayerStatRow, Model, Scan, SuperWeightRow
from db.query import run_sql
from db.repository import Catalog

from db_samples import T0, sample_result, times


def _count(url: str, table: str) -> int:
    return run_sql(url, f"SELECT count(*) FROM {table}").rows[0][0]


def test_round_trip_gives_back_an_equal_result(catalog_url):
    result = sample_result()
    scan_id = Catalog(catalog_url).save(result, **times())
    [stored] = Catalog(catalog_url).scans()
    assert (stored.scan_id, stored.status, stored.error, stored.config_hash) == (scan_id, "ok", None, result.config_hash)
    assert stored.started_at == T0 and stored.started_at.tzinfo == UTC
    saved = {name: moment.isoformat() for name, moment in times().items()}  # the result carries the row's times
    assert stored.result == dataclasses.replace(result, **saved)


def test_same_source_revision_and_config_replaces_the_earlier_scan(catalog_url):
    catalog = Catalog(catalog_url)
    catalog.save(sample_result(ppl=40.0), **times(0))
    catalog.save(sample_result(ppl=50.0), **times(5))
    [stored] = catalog.scans()
    assert stored.result.ablations[0].ppl == 50.0
    assert stored.finished_at > T0.replace(minute=5)
    assert [_count(catalog_url, t) for t in ("models", "scans", "layer_stats", "super_weights", "ablations")] == [1, 1, 4, 2, 2]


def test_a_local_file_without_revision_is_replaced_too(catalog_url):
    catalog = Catalog(catalog_url)
    for minute in (0, 1):
        catalog.save(sample_result("/models/x.gguf", revision=None, quantization="Q4_1"), **times(minute))
    assert [_count(catalog_url, t) for t in ("models", "scans")] == [1, 1]
    assert catalog.has_scan("/models/x.gguf", None, "c0ffee0123456789")


def test_other_configs_and_revisions_are_kept_newest_first(catalog_url):
    catalog = Catalog(catalog_url)
    first = catalog.save(sample_result(), **times(0))
    second = catalog.save(sample_result(config_hash="another0config00"), **times(1))
    third = catalog.save(sample_result(revision="fedcba98"), **times(2))
    assert [s.scan_id for s in catalog.scans()] == [third, second, first]
    assert _count(catalog_url, "models") == 2


def test_has_scan_tells_finished_from_failed(catalog_url):
    catalog = Catalog(catalog_url)
    key = ("org/broken", "abc", "h1")
    assert not catalog.has_scan(*key, include_failed=True)
    catalog.record_failure(source="org/broken", repo_id="org/broken", revision="abc", config_hash="h1", config={"k": 1},
                           error="org/broken: cannot load the checkpoint", **times())
    assert not catalog.has_scan(*key)
    assert catalog.has_scan(*key, include_failed=True)


def test_a_failed_scan_keeps_its_error_and_no_model_facts(catalog_url):
    catalog = Catalog(catalog_url)
    catalog.record_failure(source="org/tiny-llama", repo_id="org/tiny-llama", revision="0123abcd", config_hash="c0ffee0123456789",
                           config={"k": 1}, error="out of memory", **times())
    [failed] = catalog.show("org/tiny-llama")
    assert (failed.status, failed.error, failed.result) == ("failed", "out of memory", None)
    assert run_sql(catalog_url, "SELECT family, num_parameters FROM models").rows == [(None, None)]
    catalog.save(sample_result(), **times(1))  # a retry that works replaces the failure
    [ok] = catalog.show("org/tiny-llama")
    assert ok.status == "ok" and ok.result.super_weights == sample_result().super_weights


def test_a_failure_in_the_middle_of_a_save_leaves_the_previous_state(catalog_url):
    catalog = Catalog(catalog_url)
    catalog.save(sample_result(), **times())
    before = catalog.scans()
    broken = sample_result(family="Changed", ppl=99.0, confirmed=((1, 17, 23), (2, 33, 71)))
    broken.super_weights[1].param = None  # NOT NULL: fails after the model is updated and the old scan deleted
    with pytest.raises(CatalogWriteError, match="nothing was written"):
        catalog.save(broken, **times(1))
    assert catalog.scans() == before
    assert run_sql(catalog_url, "SELECT family FROM models").rows == [("Llama 2",)]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_result_holding_nan_or_inf_is_refused_before_the_catalog(catalog_url, value):
    """SQL keeps NaN as NULL (then "NOT NULL constraint failed") or as a number JSON cannot hold."""
    catalog = Catalog(catalog_url)
    catalog.save(sample_result(), **times())
    before = catalog.scans()
    broken = sample_result(ppl=value)
    with pytest.raises(NonFiniteError, match=r"^the scan's ablations\[0\]\.ppl is not a finite number"):
        catalog.save(broken, **times(1))
    assert catalog.scans() == before


def test_show_finds_a_model_by_source_or_repo_id(catalog_url):
    catalog = Catalog(catalog_url)
    catalog.save(sample_result("org/tiny-llama@main", revision="0123abcd"), **times())
    assert [s.source for s in catalog.show("org/tiny-llama@main")] == ["org/tiny-llama@main"]
    assert [s.source for s in catalog.show("org/tiny-llama")] == ["org/tiny-llama@main"]
    with pytest.raises(UnknownModelError, match="org/unknown: not in the catalog"):
        catalog.show("org/unknown")


def test_lineage_ranks_models_by_shared_confirmed_coordinates(catalog_url):
    catalog = Catalog(catalog_url)
    base = ((1, 17, 23), (2, 33, 71), (3, 5, 9))
    catalog.save(sample_result("org/base", confirmed=base), **times(0))
    catalog.save(sample_result("org/fine-tune", confirmed=base[:2] + ((0, 1, 2),), base_model="org/base"), **times(1))
    catalog.save(sample_result("org/cousin", confirmed=base[:1]), **times(2))
    catalog.save(sample_result("org/stranger", confirmed=((3, 4, 5),)), **times(3))
    catalog.save(sample_result("org/impostor", confirmed=((3, 4, 5),), base_model="org/fine-tune"), **times(4))
    matches = catalog.lineage("org/fine-tune")
    assert [(m.model.source, m.overlap, m.declared) for m in matches] == [("org/base", 2, "base"), ("org/cousin", 1, None),
                                                                          ("org/impostor", 0, "fine-tune")]
    assert matches[0].shared == [(1, 17, 23), (2, 33, 71)] and matches[0].jaccard == 0.5
    assert [m.declared for m in catalog.lineage("org/base")][0] == "fine-tune"


@pytest.mark.parametrize(("kind", "row"), [(ModelInfo, Model), (LayerStat, LayerStatRow), (SuperWeight, SuperWeightRow), (Ablation,
    AblationRow)])
def test_every_result_field_has_a_column(kind, row):
    """A field added to the scan JSON needs a column (and a migration), or the catalog would drop it."""
    missing = {f.name for f in dataclasses.fields(kind)} - set(row.__table__.columns.keys())
    assert missing == set(), f"add columns for {sorted(missing)} to db/models.py and a migration"


def test_every_scan_level_field_has_a_column():
    kept = set(Scan.__table__.columns.keys()) | {"model", "layers", "super_weights", "ablations", "schema"}
    missing = {f.name for f in dataclasses.fields(ScanResult)} - kept
    assert missing == set(), f"add columns for {sorted(missing)} to db/models.py and a migration"
