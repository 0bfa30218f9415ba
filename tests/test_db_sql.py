"""`superweights sql` and `export`: DuckDB over the catalog, read-only, on both backends."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from db import render
from db.errors import QueryError, QueryStoppedError, WriteRefusedError
from db.limits import QueryLimits
from db.query import check_read_only, export_parquet, run_sql
from db.repository import Catalog
from db.schema import TABLES

from db_samples import sample_result, times

README = Path(__file__).resolve().parents[1] / "README.md"
COORDS = "SELECT layer, row, col, verdict FROM super_weights ORDER BY layer"


@pytest.fixture
def filled(catalog_url) -> str:
    """A catalog holding a full-precision model and a quantized variant that lost a super weight."""
    catalog = Catalog(catalog_url)
    catalog.save(sample_result("org/tiny-llama", confirmed=((1, 17, 23), (2, 33, 71))), **times(0))
    catalog.save(sample_result("/models/tiny-llama.Q4_1.gguf", revision=None, quantization="Q4_1", confirmed=((1, 17, 23),)), **times(1))
    return catalog_url


def test_query_result_in_every_format(filled):
    result = run_sql(filled, COORDS)
    assert result.columns == ["layer", "row", "col", "verdict"]
    assert result.rows[:2] == [(0, 45, 101, "rejected"), (0, 45, 101, "rejected")]
    assert list(csv.reader(io.StringIO(render.query_csv(result))))[-1] == ["2", "33", "71", "confirmed"]
    assert json.loads(render.query_json(result))[-1] == {"layer": 2, "row": 33, "col": 71, "verdict": "confirmed"}
    console = Console(file=io.StringIO(), width=200)
    console.print(render.query_table(result))
    assert "confirmed" in console.file.getvalue() and "5 rows" in console.file.getvalue()


def test_times_and_json_columns_read_back(filled):
    [(started, tags)] = run_sql(filled,
                                "SELECT min(started_at)::VARCHAR, any_value(tags) FROM scans JOIN models ON models.id = model_id").rows
    assert started.startswith("2026-11-28 12:00:00.123456")
    assert json.loads(tags) == ["text-generation", "llama"]


@pytest.mark.parametrize("statement", [
    "DELETE FROM models",
    "DROP TABLE scans",
    "UPDATE models SET family = 'x'",
    "CREATE TABLE t AS SELECT 1",
    "SELECT 1; DELETE FROM models",
    "COPY models TO '/tmp/models.csv'",
    "ATTACH '/tmp/other.db' AS other",
    "INSTALL httpfs",
    "SET threads = 1",
])
def test_statements_that_write_or_change_things_are_refused(statement):
    with pytest.raises(WriteRefusedError, match="refused"):
        check_read_only(statement)


def test_a_refused_statement_leaves_the_catalog_alone(filled):
    with pytest.raises(WriteRefusedError, match="DELETE statement refused"):
        run_sql(filled, "DELETE FROM models")
    assert run_sql(filled, "SELECT count(*) FROM models").rows == [(2,)]


def test_reads_of_every_kind_pass():
    for statement in ("WITH a AS (SELECT 1) SELECT * FROM a", "DESCRIBE models", "SHOW TABLES", "EXPLAIN SELECT 1", "FROM models"):
        check_read_only(statement)


def test_user_sql_cannot_reach_the_file_system(filled):
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_sql(filled, "SELECT * FROM read_text('/etc/hostname')")


@pytest.fixture
def secret(tmp_path) -> Path:
    """Another SQLite file on the same disk, which user SQL must not read."""
    path = tmp_path / "secret.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (password TEXT)")
        con.execute("INSERT INTO t VALUES ('hunter2')")
    return path


@pytest.mark.parametrize("statement", [
    "SELECT * FROM sqlite_scan('{secret}', 't')",
    "SELECT * FROM sqlite_query('{secret}', 'SELECT * FROM t')",
    "SELECT * FROM sqlite_attach('{secret}')",
    "SELECT * FROM postgres_query('superweights', 'SELECT 1')",
    "SELECT * FROM postgres_scan('dbname=postgres', 'public', 't')",
    "SELECT * FROM postgres_execute('superweights', 'DROP TABLE models')",
])
def test_user_sql_reads_the_catalog_and_nothing_else(filled, secret, statement):
    """The scanner extensions' functions read any file or server: the sandbox never loaded them."""
    sql = statement.format(secret=secret)
    with pytest.raises(QueryError, match=r"is not available: `superweights sql` reads the catalog's tables and nothing else"):
        run_sql(filled, sql)
    assert run_sql(filled, "SELECT count(*) FROM models").rows == [(2,)]


def test_an_endless_query_stops_at_its_timeout(filled):
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    with pytest.raises(QueryStoppedError, match=r"stopped after 0.5s \(--timeout\); narrow it"):
        run_sql(filled, endless, QueryLimits(timeout=0.5))


def test_a_long_result_is_cut_at_max_rows_and_says_so(filled):
    result = run_sql(filled, "SELECT * FROM range(5000000)", QueryLimits(max_rows=100))
    assert (len(result.rows), result.cut) == (100, True)
    assert run_sql(filled, "SELECT * FROM range(100)", QueryLimits(max_rows=100)).cut is False


def test_syntax_error_is_one_line(filled):
    with pytest.raises(QueryError) as error:
        run_sql(filled, "SELEC * FROM models")
    assert "\n" not in str(error.value) and 'syntax error at or near "SELEC"' in str(error.value)


def test_export_writes_one_readable_parquet_file_per_table(filled, tmp_path):
    written = export_parquet(filled, tmp_path / "out")
    assert [p.name for p in written] == [f"{t}.parquet" for t in TABLES]
    counts = {p.stem: duckdb.sql(f"SELECT count(*) FROM '{p}'").fetchone()[0] for p in written}
    assert counts == {"models": 2, "scans": 2, "layer_stats": 8, "super_weights": 5, "ablations": 4}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)  # no temp files left


def _readme_queries() -> list[str]:
    section = README.read_text().split("## Catalog", 1)[1].split("\n## ", 1)[0]
    return [q.strip() for q in re.findall(r"```sql\n(.*?)```", section, re.S)]


def test_readme_queries_run(filled):
    queries = _readme_queries()
    assert len(queries) >= 3
    results = [run_sql(filled, q) for q in queries]
    assert all(r.rows for r in results), [q for q, r in zip(queries, results, strict=True) if not r.rows]
