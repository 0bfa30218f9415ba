"""The commands that do not scan start fast: they import neither torch nor transformers (nor, those
that only read the catalog, SQLAlchemy), find a model by any unique part of its name, and print
whole tables when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db.repository import Catalog

from db_samples import sample_result, times

# `catalog.cli.main` with ARGS, then the heavy libraries it imported, as JSON on the descriptor $PROBE_FD
PROBE = """
import json, os, sys
from catalog.cli import main
status = main(sys.argv[1:])
with os.fdopen(int(os.environ["PROBE_FD"]), "w") as report:
    json.dump({"status": status, "loaded": [m for m in os.environ["PROBE_MODULES"].split() if m in sys.modules]}, report)
"""
SCANNING = "torch transformers ray"  # what only scans and surveys need
MIGRATING = "alembic"  # only `db upgrade` of an older catalog and a writer's first use of a catalog migrate
WRITING = "sqlalchemy"  # the writers' ORM; readers use the DB-API driver (db.dbapi)
LONG = "org/" + "a-model-name-longer-than-any-terminal-" * 3 + "7b"


def run_probe(args: list[str], modules: str = SCANNING) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ARGS in a fresh process; its exit status and which of `modules` it imported."""
    read, write = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PROBE_FD": str(write), "PROBE_MODULES": modules}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], pass_fds=(write,), capture_output=True, text=True, env=env, timeout=120)
    os.close(write)
    with os.fdopen(read) as report:
        return json.loads(report.read() or "{}"), done


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    catalog.save(sample_result("org/tiny-llama"), **times(0))
    catalog.save(sample_result("org/tiny-llama-chat", base_model="org/tiny-llama"), **times(1))
    catalog.save(sample_result(LONG), **times(2))
    return url


def test_commands_that_do_not_scan_import_neither_torch_nor_transformers_nor_an_orm_to_read(catalog_url, tmp_path):
    commands = {
        "help": ["--help"], "scan help": ["scan", "--help"], "survey help": ["survey", "--help"],
        "sql": ["sql", "SELECT count(*) FROM models", "--db", catalog_url],
        "show": ["show", "org/tiny-llama", "--db", catalog_url], "lineage": ["lineage", "org/tiny-llama-chat", "--db", catalog_url],
        "export": ["export", "--parquet", str(tmp_path / "parquet"), "--db", catalog_url],
        **{f"export {fmt}": ["export", "--keep-list", fmt, "org/tiny-llama", "--db", catalog_url]
           for fmt in ("llama.cpp", "bitsandbytes", "llm-compressor", "restore")},
        "apply-restore help": ["apply-restore", "--help"],
        "db upgrade": ["db", "upgrade", "--db", catalog_url], "report": ["report", "--out", str(tmp_path / "site"), "--db", catalog_url],
    }
    for name, args in commands.items():
        report, done = run_probe(args, f"{SCANNING} {MIGRATING} {WRITING}")  # `db upgrade` of a current catalog only reads
        assert report == {"status": 0, "loaded": []}, (name, done.stderr[-2000:])
    assert (tmp_path / "site" / "index.html").is_file() and any((tmp_path / "parquet").glob("*.parquet"))


def test_help_loads_no_database_library():
    for args in (["--help"], ["db", "--help"]):
        report, done = run_probe(args, "sqlalchemy duckdb sqlite3 psycopg")
        assert report == {"status": 0, "loaded": []}, (args, done.stderr[-2000:])


def test_show_finds_a_model_by_any_unique_part_of_its_name(superweights, catalog_url):
    status, out, _ = superweights("show", "TINY-LLAMA-CH", "--db", catalog_url)  # case ignored
    assert status == 0 and "org/tiny-llama-chat" in out
    status, out, _ = superweights("show", "Tiny-Llama", "--db", catalog_url)  # the name without its organization
    assert status == 0 and "org/tiny-llama-chat" not in out
    status, out, err = superweights("show", "tiny", "--db", catalog_url)
    assert (status, out) == (1, "") and err.strip().count("\n") == 0
    assert "matches 2 models (org/tiny-llama, org/tiny-llama-chat)" in err
    status, out, _ = superweights("show", "org/tiny-llama", "--db", catalog_url)  # exact beats the longer name it is part of
    assert status == 0 and "org/tiny-llama-chat" not in out
    for nothing in ("%", "", " "):  # LIKE's wildcards are literal; an empty name is part of every name, yet names none
        status, _, err = superweights("lineage", nothing, "--db", catalog_url)
        assert status == 1 and err.startswith(f"error: {nothing if nothing.strip() else repr(nothing)}: not in the catalog")


def test_piped_tables_are_not_cut_to_a_terminal_width(catalog_url):
    report, done = run_probe(["show", "model-name-longer", "--db", catalog_url])
    assert report["status"] == 0, done.stderr
    assert LONG in done.stdout  # on one line, neither folded nor cut with an ellipsis
    assert max(map(len, done.stdout.splitlines())) > 120
