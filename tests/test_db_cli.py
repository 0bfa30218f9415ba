"""The catalog's commands end to end: a real scan saved by `scan`, queried by `sql`; bad input
gives one line, a non-zero exit, and leaves the catalog untouched.
"""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time

import pytest
from rich.console import Console

from db import render

from superweights_cli import run_cli
from tiny import SUPER


def test_scan_saves_to_the_catalog_and_sql_reads_it(tiny, tmp_path, superweights):
    model = tiny("llama", effect=True).path
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    scan = ["scan", str(model), "--db", url, "--no-verify"]  # the causal checks have their own tests
    first = run_cli(*scan, env={"COLUMNS": "500"})  # no wrapped lines
    assert first.returncode == 0, first.stderr
    assert f"saved scan 1 to {url}" in first.stderr
    status, _, err = superweights(*scan, "--skip-existing")  # in-process: the check comes before loading the model
    assert status == 0 and "already in the catalog" in err and "saved" not in err
    query = run_cli("sql", "SELECT m.source, m.family, w.layer, w.row, w.col, w.verdict FROM super_weights w "
                    "JOIN scans s ON s.id = w.scan_id JOIN models m ON m.id = s.model_id",
                    "--db", url, "--format", "json")
    assert query.returncode == 0, query.stderr
    [row] = json.loads(query.stdout)
    assert (row["source"], row["layer"], row["row"], row["col"]) == (str(model), *SUPER)


def test_bad_url_is_one_line_and_creates_nothing(superweights, tmp_path):
    status, out, err = superweights("sql", "SELECT 1", "--db", "mysql://somewhere/db")
    assert (status, out) == (1, "")
    assert err.strip().splitlines() == ["error: --db 'mysql://somewhere/db': unsupported scheme 'mysql'. Give sqlite:///PATH (embedded "
                                        "file) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME."]


def test_unreachable_postgres_is_one_line(superweights):
    status, _, err = superweights("show", "org/x", "--db", "postgresql://someone:secret@127.0.0.1:1/catalog")
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "catalog postgresql://someone:***@127.0.0.1:1/catalog: cannot connect" in err and "secret" not in err


def test_scan_fails_before_scanning_when_the_catalog_is_unreachable(superweights, tiny, tmp_path):
    missing = tmp_path / "no" / "such"
    status, out, err = superweights("scan", str(tiny("llama", effect=True).path), "--db", f"sqlite:///{missing / 'c.db'}", "--no-verify")
    assert (status, out) == (1, "")
    assert f"directory {missing} does not exist" in err and not missing.exists()


def test_sql_errors_are_one_line_and_leave_the_catalog_alone(superweights, catalog_url):
    from db.repository import Catalog

    from db_samples import sample_result, times

    Catalog(catalog_url).save(sample_result(), **times())
    for statement, message in [("SELEC 1", 'syntax error at or near "SELEC"'), ("DROP TABLE models", "DROP statement refused")]:
        status, out, err = superweights("sql", statement, "--db", catalog_url)
        assert (status, out) == (1, "") and len(err.strip().splitlines()) == 1 and message in err
    assert superweights("sql", "SELECT count(*) AS n FROM models", "--db", catalog_url, "--format", "csv")[1] == "n\n1\n"


def test_show_and_lineage(superweights, catalog_url):
    from db.repository import Catalog

    from db_samples import sample_result, times

    catalog = Catalog(catalog_url)
    catalog.save(sample_result("org/base"), **times(0))
    catalog.save(sample_result("org/fine-tune", base_model="org/base"), **times(1))
    status, out, _ = superweights("show", "org/base", "--db", catalog_url)
    assert status == 0 and "Llama 2" in out and "Super weights (2 candidates: 1 confirmed, 1 rejected)" in out
    wide = Console(file=io.StringIO(), width=250)  # piped, the command's own console wraps at 80 columns
    wide.print(render.show(catalog.show("org/base")))
    lines = wide.file.getvalue().splitlines()
    header = next(line for line in lines if "inconclusive" in line and "status" in line)
    scan = next(line for line in lines if line.startswith("│ 1 ") and " ok " in line)
    counts = dict(zip((c.strip() for c in header.strip("┃").split("┃")), (c.strip() for c in scan.strip("│").split("│"))))
    assert [counts[v] for v in ("confirmed", "rejected", "inconclusive", "untested")] == ["1", "1", "0", "0"]
    columns = [c.strip() for c in next(line for line in lines if "condition" in line).strip("┃").split("┃")]
    assert columns[:3] == ["condition", "× baseline", "95% interval"] and "baseline ppl" in columns  # ratio and interval first
    status, out, _ = superweights("lineage", "org/fine-tune", "--db", catalog_url)
    assert status == 0 and re.search(r"^│ org/base .*│ base +│$", out, re.M)  # its row, declared: base
    status, _, err = superweights("show", "org/unknown", "--db", catalog_url)
    assert status == 1 and err.startswith("error: org/unknown: not in the catalog")


def test_export_and_upgrade_commands(superweights, tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    status, _, err = superweights("db", "upgrade", "--db", url)
    assert status == 0 and f"{url}: schema at revision" in err
    status, _, err = superweights("export", "--parquet", str(tmp_path / "pq"), "--db", url)
    assert status == 0 and len(list((tmp_path / "pq").glob("*.parquet"))) == 5


ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


@pytest.fixture
def sqlite_catalog(tmp_path) -> str:
    from db.schema import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    return url


def test_ctrl_c_during_sql_is_one_line(superweights, sqlite_catalog):
    """Ctrl-C while the query runs (its handler is in place): one line, exit status 130."""
    original, main_thread = signal.getsignal(signal.SIGINT), threading.get_ident()

    def press_ctrl_c() -> None:
        while signal.getsignal(signal.SIGINT) is original:
            time.sleep(0.01)
        signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    status, out, err = superweights("sql", ENDLESS, "--db", sqlite_catalog, "--timeout", "600")
    assert (status, out) == (130, "")
    assert err.strip() == "error: SQL 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 F...': interrupted (Ctrl-C)."
    assert signal.getsignal(signal.SIGINT) is original


def test_sql_says_when_max_rows_cut_the_result(superweights, sqlite_catalog):
    status, out, err = superweights("sql", "SELECT * FROM range(10)", "--db", sqlite_catalog, "--max-rows", "3", "--format", "csv")
    assert (status, out) == (0, "range\n0\n1\n2\n")
    assert err.strip() == "note: only the first 3 rows; raise --max-rows (0: no limit) or add a LIMIT."


def test_sql_is_limited_by_default(superweights, sqlite_catalog):
    """Without --max-rows a runaway result stops at 10,000 rows and says so."""
    status, out, err = superweights("sql", "SELECT * FROM range(20000)", "--db", sqlite_catalog, "--format", "csv")
    assert status == 0 and out.splitlines()[1:] == [str(n) for n in range(10_000)]
    assert err.strip() == "note: only the first 10000 rows; raise --max-rows (0: no limit) or add a LIMIT."


def test_sql_past_its_timeout_is_one_line(superweights, sqlite_catalog):
    status, out, err = superweights("sql", ENDLESS, "--db", sqlite_catalog, "--timeout", "0.5")
    assert (status, out) == (1, "")
    assert re.fullmatch(r"error: SQL 'WITH RECURSIVE r\(n\) AS .*\.\.\.': stopped after 0\.5s \(--timeout\); narrow it.*", err.strip())
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("reader", ["sqlite_scan('{path}', 't')", "sqlite_attach('{path}')", "read_text('{path}')"])
def test_sql_cannot_read_another_file(superweights, sqlite_catalog, tmp_path, reader):
    """Another database or file on the disk stays out of reach of `superweights sql`."""
    import sqlite3

    secret = tmp_path / "secret.db"
    with sqlite3.connect(secret) as con:
        con.execute("CREATE TABLE t (password TEXT)")
        con.execute("INSERT INTO t VALUES ('hunter2')")
    status, out, err = superweights("sql", f"SELECT * FROM {reader.format(path=secret)}", "--db", sqlite_catalog)
    assert (status, out) == (1, "") and "hunter2" not in err
    assert err.startswith("error: SQL ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,line", [
    (["--timeout", "nan"], "error: --timeout: 'nan' is not a finite number."),
    (["--timeout", "-1"], "error: --timeout: -1.0 is not in the range x>=0."),
    (["--max-rows", "-5"], "error: --max-rows: -5 is not in the range x>=0."),
])
def test_sql_limits_are_checked_where_they_are_parsed(superweights, sqlite_catalog, args, line):
    status, out, err = superweights("sql", "SELECT 1", "--db", sqlite_catalog, *args)
    assert (status, out, err.strip()) == (2, "", line)


def test_export_into_an_unwritable_place_is_one_line(superweights, sqlite_catalog):
    status, _, err = superweights("export", "--parquet", "/proc/superweights-export", "--db", sqlite_catalog)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --parquet: cannot write /proc/superweights-export (")


def test_export_writes_through_a_symlink_and_keeps_it(superweights, sqlite_catalog, tmp_path):
    out, elsewhere = tmp_path / "pq", tmp_path / "elsewhere.parquet"
    out.mkdir()
    (out / "models.parquet").symlink_to(elsewhere)
    status, _, err = superweights("export", "--parquet", str(out), "--db", sqlite_catalog)
    assert status == 0, err
    assert (out / "models.parquet").is_symlink() and elsewhere.stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in ("models", "scans", "layer_stats", "super_weights",
                                                                                    "ablations"))
