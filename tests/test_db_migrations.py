"""The Alembic migrations build exactly the ORM's schema, both ways, on both backends, and
carry the rows of a catalog written at an earlier revision."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, select, text

from db import migrate, schema
from db.engine import engine_for
from db.errors import CatalogOutOfDateError, CatalogTooNewError
from db.location import parse
from db.models import Base
from db.reads import CatalogReader
from db.repository import Catalog
from db.schema import TABLES, upgrade

ROOT = Path(__file__).resolve().parents[1]
# Real `superweights scan` JSON of the SmolLM2 GGUF written by the schema-1 code (0001 era), its
# source path replaced by the file name: the default scan, one with --confirm-ratio 4.5, one --no-verify.
SCHEMA1 = {name: ROOT / "tests" / "data" / f"smollm2-schema1-{name}.json" for name in ("default", "confirm-ratio-4.5", "no-verify")}


def _engine(url: str) -> Engine:
    return engine_for(parse(url))


def _differences(engine: Engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_head_matches_the_orm(empty_catalog_url):
    _, revision = upgrade(empty_catalog_url)
    assert revision == schema.head()
    assert _differences(_engine(empty_catalog_url)) == []
    assert set(TABLES) == set(Base.metadata.tables)  # what `sql` and `export` copy is the whole schema


def test_the_read_commands_know_the_history_alembic_reads():
    """`db.schema` reads the revisions from the file names, without Alembic: the same history, newest first."""
    assert schema.revisions() == [revision.revision for revision in migrate.script().walk_revisions()]
    assert schema.head() == migrate.script().get_current_head()


def test_downgrade_to_base_then_upgrade_again(empty_catalog_url):
    engine = _engine(empty_catalog_url)
    migrate.upgrade(engine)
    assert migrate.downgrade(engine) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert migrate.upgrade(engine) == schema.head()
    assert _differences(engine) == []


def test_alembic_command_line_uses_alembic_ini(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    subprocess.run([sys.executable, "-m", "alembic", "-x", f"db={url}", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True)
    assert migrate.current(_engine(url)) == schema.head()


@pytest.mark.usefixtures("catalog_home")
def test_embedded_catalog_is_created_at_head_on_first_use(catalog_home):
    catalog = Catalog()
    assert catalog.url == f"sqlite:///{catalog_home / 'catalog.db'}"
    assert set(TABLES) <= set(inspect(_engine(catalog.url)).get_table_names())


@pytest.mark.postgres
def test_a_server_is_not_migrated_implicitly(postgres_server):
    url = postgres_server.create_database()
    with pytest.raises(CatalogOutOfDateError, match="superweights db upgrade"):
        Catalog(url)
    assert inspect(_engine(url)).get_table_names() == []


def test_a_catalog_from_a_newer_version_is_refused_untouched(catalog_url):
    engine = _engine(catalog_url)
    _stamp(engine, "f00d")
    try:
        with pytest.raises(CatalogTooNewError, match="revision f00d, newer than this version knows"):
            Catalog(catalog_url)
        assert migrate.current(engine) == "f00d"
    finally:
        _stamp(engine, schema.head())  # the PostgreSQL catalog is shared by the session


def _stamp(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def _save_at_0001(engine: Engine, scans: list[dict]) -> None:
    """Save scan JSONs of one model as the 0001 repository did: each item's keys that name a column of
    the tables as they are at 0001 (reflected), one scan row per scan, its children under it."""
    meta = MetaData()
    with engine.begin() as connection:
        meta.reflect(connection)
        tables = meta.tables

        def insert(table: str, item: dict, **extra) -> int:
            values = {k: v for k, v in item.items() if k in tables[table].columns} | extra
            return connection.execute(tables[table].insert().values(values)).inserted_primary_key[0]

        model_id = insert("models", scans[0]["model"])
        for minutes, scan in enumerate(scans):
            started = datetime(2026, 11, 30, 12, minutes, tzinfo=UTC)
            scan_id = insert("scans", scan, model_id=model_id, status="ok", started_at=started, finished_at=started + timedelta(seconds=40),
                             dtype=scan["model"]["dtype"], device=scan["environment"]["device"])
            for key, table in (("layers", "layer_stats"), ("super_weights", "super_weights"), ("ablations", "ablations")):
                for item in scan[key]:
                    insert(table, item, scan_id=scan_id)


def test_a_catalog_written_at_0001_gets_paired_rows_and_verdicts(empty_catalog_url):
    """SmolLM2 at 0001: every candidate but layer 11's was refuted by its interval (rejected); with
    --confirm-ratio 4.5 layer 11's interval [3.83, 5.06] straddles it (inconclusive); --no-verify's
    candidates were never tested. Rows that stopped after the first window are paired with the
    baseline on that window alone, one perplexity for all of them and not the baseline row's.
    Downgrading gives 0001's verdicts back."""
    engine = _engine(empty_catalog_url)
    migrate.upgrade(engine, "0001")
    written = {name: json.loads(path.read_text()) for name, path in SCHEMA1.items()}
    _save_at_0001(engine, list(written.values()))
    assert migrate.upgrade(engine) == schema.head()

    results = {s.result.config.get("confirm_ratio"): s.result for s in Catalog(empty_catalog_url).scans()}
    default, strict, unverified = results[2.0], results[4.5], results[None]
    assert [w.verdict for w in default.super_weights] == ["confirmed"] + ["rejected"] * 5
    assert [w.verdict for w in strict.super_weights] == ["inconclusive"] + ["rejected"] * 5
    assert [w.verdict for w in unverified.super_weights] == ["untested"] * 6 and unverified.ablations == []
    l11 = default.super_weights[0]
    assert (l11.layer, l11.row, l11.col) == (11, 507, 1229) and l11.ppl_ratio_low > 3 and l11.ppl_ratio_high < 5

    base, *rows = default.ablations
    assert [r.kind for r in default.ablations] == ["baseline"] + ["weight"] * 6 + ["all_weights", "random_control", "outlier_control",
                                                                                   "restore_sa"]
    assert (base.windows, base.ratio_low, base.ratio_high, base.baseline_ppl) == (8, 1.0, 1.0, base.ppl)
    for row in rows:
        assert row.ratio_low <= row.ratio <= row.ratio_high and row.baseline_ppl == pytest.approx(row.ppl / row.ratio)
        assert row.tokens == row.windows * 511, row.name
    first_window = {round(r.baseline_ppl, 9) for r in rows if r.windows == 1}
    assert len(first_window) == 1 and first_window.pop() < base.ppl * 0.7  # the first window reads easier than the text

    migrate.downgrade(engine, "0001")
    with engine.connect() as connection:
        verdicts = connection.execute(select(text("verdict")).select_from(text("super_weights")).order_by(text("id"))).scalars().all()
    assert verdicts == [w["verdict"] for scan in written.values() for w in scan["super_weights"]]


def test_a_catalog_written_at_0002_names_its_hub_models_and_keeps_every_scan(empty_catalog_url):
    """0003: Hub rows get name and organization from their repo id, a source typed with its
    revision is renamed to the repo id unless that name is taken at that revision; local rows keep
    theirs (no fingerprint: the files are not at hand). Downgrading drops the columns, not the scans."""
    engine = _engine(empty_catalog_url)
    migrate.upgrade(engine, "0002")
    rows = [("org/tiny@main", "org/tiny", "abc"), ("org/x", "org/x", "r1"), ("org/x@r1", "org/x", "r1"), ("/m/model.gguf", None, None)]
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for i, (source, repo_id, revision) in enumerate(rows, 1):
            connection.execute(text("INSERT INTO models (id, source, repo_id, revision) VALUES (:i, :s, :r, :v)"),
                               {"i": i, "s": source, "r": repo_id, "v": revision})
            connection.execute(text("INSERT INTO scans (model_id, config_hash, config, status, started_at, finished_at) "
                                    "VALUES (:i, 'c0ffee', '{}', 'ok', :t, :t)"), {"i": i, "t": moment})
    assert migrate.upgrade(engine) == schema.head()
    with engine.connect() as connection:
        found = connection.execute(text("SELECT source, name, organization, named_from, fingerprint FROM models ORDER BY id")).all()
    assert [tuple(row) for row in found] == [
        ("org/tiny", "tiny", "org", "hub repo id", None), ("org/x", "x", "org", "hub repo id", None),
        ("org/x@r1", "x", "org", "hub repo id", None), ("/m/model.gguf", None, None, None, None)]
    migrate.downgrade(engine, "0002")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM scans")).scalar() == 4
        assert "fingerprint" not in {c["name"] for c in inspect(connection).get_columns("models")}


def test_a_catalog_written_at_0003_keeps_its_super_weights_without_a_shape(empty_catalog_url):
    """0004: `super_weights.tensor_shape` arrives NULL for rows written before (a restore file for
    them is refused until the model is scanned again); a new save stores it; downgrading drops it."""
    engine = _engine(empty_catalog_url)
    migrate.upgrade(engine, "0003")
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO models (source) VALUES ('org/old')"))  # ids from the sequences (PostgreSQL)
        connection.execute(text("INSERT INTO scans (model_id, config_hash, config, status, started_at, finished_at) "
                                "SELECT id, 'c0ffee', '{}', 'ok', :t, :t FROM models"), {"t": moment})
        connection.execute(text("INSERT INTO super_weights (scan_id, layer, param, row, col, tensor_index, value, input_activation, "
                                "output_activation, share, token, iteration, verdict) SELECT id, 2, 'model.layers.2.mlp.down_proj.weight', "
                                "3, 4, '[3, 4]', -1.5, 10, -15, 1, 0, 1, 'confirmed' FROM scans"))
    migrate.upgrade(engine)
    (old,) = CatalogReader(empty_catalog_url).show("org/old")
    assert old.result.super_weights[0].tensor_shape is None and old.result.super_weights[0].tensor_index == [3, 4]
    from db_samples import sample_result, times

    Catalog(empty_catalog_url).save(sample_result(), **times())
    (new,) = CatalogReader(empty_catalog_url).show("org/tiny-llama")
    assert {tuple(w.tensor_shape) for w in new.result.super_weights} == {(64, 160)}
    migrate.downgrade(engine, "0003")
    with engine.connect() as connection:
        assert "tensor_shape" not in {c["name"] for c in inspect(connection).get_columns("super_weights")}
        assert connection.execute(text("SELECT count(*) FROM super_weights")).scalar() == 3
