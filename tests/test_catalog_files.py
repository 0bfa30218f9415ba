"""Databases that are not (yet) catalogs, and catalogs that cannot be written: the read commands
open read-only and change nothing; no command migrates another program's database; each ends in
one line, before any scan."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from db import migrate, schema
from db.engine import engine_for
from db.location import parse
from db.schema import upgrade

from superweights_cli import WITHOUT_OVERRIDE, isolated_env, one_line_error, run_many

READS = {  # every read-only command, with the --db option last
    "sql": ["sql", "SELECT count(*) FROM models"],
    "show": ["show", "org/x"],
    "lineage": ["lineage", "org/x"],
    "report": ["report", "--out", "{tmp}/site"],
    "export": ["export", "--parquet", "{tmp}/parquet"],
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_db(path: Path) -> Path:
    """Another program's SQLite file, with a `models` table of its own."""
    with sqlite3.connect(path) as con:
        con.executescript("CREATE TABLE models (name TEXT); CREATE TABLE notes (body TEXT); INSERT INTO models VALUES ('mine');")
    return path


def read_args(name: str, tmp_path: Path, url: str) -> list[str]:
    return [a.format(tmp=tmp_path) for a in READS[name]] + ["--db", url]


@pytest.mark.parametrize("name", READS)
def test_read_commands_leave_another_programs_database_untouched(superweights, tmp_path, name):
    path = foreign_db(tmp_path / "theirs.db")
    before = digest(path)
    status, out, err = superweights(*read_args(name, tmp_path, f"sqlite:///{path}"))
    assert (status, out) == (1, "")
    assert err.strip() == (f"error: catalog sqlite:///{path}: not a superweights catalog (it holds tables of its own "
                           "(models, notes) and no superweights schema). Give the catalog's --db, or a new file to start one.")
    assert digest(path) == before


@pytest.mark.parametrize("name", READS)
def test_read_commands_do_not_create_tables_in_an_empty_file(superweights, tmp_path, name):
    path = tmp_path / "empty.db"
    path.touch()
    status, _, err = superweights(*read_args(name, tmp_path, f"sqlite:///{path}"))
    assert status == 1 and "schema at revision none" in err and "superweights db upgrade" in err
    assert path.stat().st_size == 0


@pytest.mark.parametrize("name", READS)
def test_read_commands_on_a_text_file_say_it_is_not_a_database(superweights, tmp_path, name):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n" * 100)
    status, _, err = superweights(*read_args(name, tmp_path, f"sqlite:///{path}"))
    assert status == 1 and err.strip().endswith("not a superweights catalog (the file is not an SQLite database). "
                                                 "Give the catalog's --db, or a new file to start one.")


@pytest.mark.usefixtures("catalog_home")
def test_read_commands_without_a_catalog_create_nothing(superweights, catalog_home, tmp_path):
    status, _, err = superweights("sql", "SELECT 1")
    assert status == 1 and "no such database file" in err
    assert not catalog_home.exists()  # not even SUPERWEIGHTS_HOME


@pytest.mark.parametrize("name", READS)
def test_read_commands_never_migrate_an_empty_database(superweights, empty_catalog_url, tmp_path, name):
    """A new file is not created; a new server database gets no tables."""
    status, _, err = superweights(*read_args(name, tmp_path, empty_catalog_url))
    assert status == 1 and len(err.strip().splitlines()) == 1
    if empty_catalog_url.startswith("sqlite"):
        assert not (tmp_path / "catalog.db").exists()
    else:
        assert inspect(engine_for(parse(empty_catalog_url))).get_table_names() == []


def text_file(path: Path) -> Path:
    path.write_text("just some notes\n" * 100)
    return path


@pytest.mark.parametrize("make,says", [
    (foreign_db, "not a superweights catalog (it holds tables of its own"),
    (text_file, "not a superweights catalog (the file is not an SQLite database)"),
], ids=["foreign-database", "text-file"])
def test_writes_refuse_what_is_not_a_catalog(superweights, tmp_path, tiny, make, says):
    """`db upgrade` and `scan` neither migrate nor overwrite it, and the scan never starts."""
    path, model = make(tmp_path / "theirs.db"), str(tiny("llama").path)
    before = digest(path)
    for args in (["db", "upgrade"], ["scan", model, "--no-verify"]):
        status, out, err = superweights(*args, "--db", f"sqlite:///{path}")
        assert (status, out) == (1, "") and says in err and len(err.strip().splitlines()) == 1
    assert digest(path) == before


def test_upgrade_of_a_catalog_from_a_newer_version_is_refused_untouched(superweights, tmp_path):
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    with engine_for(parse(url)).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    status, _, err = superweights("db", "upgrade", "--db", url)
    assert status == 1 and err.strip() == (f"error: catalog {url}: schema at revision f00d, newer than this version knows. "
                                           "Upgrade superweights (pip install -U superweight-catalog).")
    assert migrate.current(engine_for(parse(url))) == "f00d"


def test_upgrade_to_an_unknown_revision_is_one_line_and_creates_nothing(superweights, tmp_path):
    status, _, err = superweights("db", "upgrade", "--revision", "nonsense", "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert status == 1 and err.strip() == f"error: --revision: unknown revision 'nonsense'; known: head, {', '.join(schema.revisions())}."
    assert not (tmp_path / "c.db").exists()


def _waiting_for_flock(path: Path) -> bool:
    """Whether a process waits for an flock on `path` (/proc/locks marks waiters `->`)."""
    inode = f":{os.stat(path).st_ino} "
    return any("-> FLOCK" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_second_migration_waits_for_the_first(tmp_path):
    """A first use caught half-way (tables made, version not yet written) holds the migration lock:
    a `db upgrade` started then waits for it, and then finds the schema done (no "already exists")."""
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = engine_for(parse(url))
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM alembic_version"))
    outcome: list = []
    with open(path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first migrator, still at work
        second = threading.Thread(target=lambda: outcome.append(_upgrade_or_error(url)))
        second.start()
        while second.is_alive() and not _waiting_for_flock(path):
            time.sleep(0.01)
        with engine.begin() as connection:  # the first migrator finishes
            connection.execute(text("INSERT INTO alembic_version VALUES (:head)"), {"head": schema.head()})
    second.join()
    assert outcome == [(url, schema.head())]


@pytest.mark.postgres
def test_a_second_migration_of_a_server_waits_for_the_first(postgres_server):
    """Migrators of one server database queue on an advisory lock: the second, started while the
    first holds it, waits, then finds the schema at head instead of creating its tables twice."""
    url = postgres_server.create_database()
    engine = engine_for(parse(url))
    outcome: list = []
    with engine.connect() as first:
        first.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrate.LOCK_KEY})
        second = threading.Thread(target=lambda: outcome.append(_upgrade_or_error(url)))
        second.start()
        while second.is_alive() and not _waiting_for_advisory_lock(first):
            time.sleep(0.01)
        assert second.is_alive() and outcome == []  # it waits: nothing migrated behind the lock
        migrate.upgrade_on(first)  # the first migrator's work, under its lock
        first.commit()
        first.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrate.LOCK_KEY})
    second.join()
    assert outcome == [(url, schema.head())]


def _waiting_for_advisory_lock(connection) -> bool:
    return bool(connection.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar())


def _upgrade_or_error(url: str) -> object:
    try:
        return upgrade(url)
    except Exception as exc:  # what the test reports when the second migrator did not wait
        return exc


def test_a_read_only_catalog_fails_before_the_scan(tiny, tmp_path):
    """As a user for whom file modes hold (root runs it without its override capabilities)."""
    url = f"sqlite:///{tmp_path / 'read-only.db'}"
    upgrade(url)
    (tmp_path / "read-only.db").chmod(0o444)
    (tmp_path / "locked").mkdir(mode=0o555)
    scan = ["scan", str(tiny("llama").path), "--no-verify", "--device", "cpu", "--db"]
    commands = {"file": [*scan, url], "directory": [*scan, f"sqlite:///{tmp_path / 'locked' / 'new.db'}"]}
    runs = run_many(commands, isolated_env(tmp_path / "env"), under=WITHOUT_OVERRIDE)
    assert one_line_error(runs["file"]) == f"error: catalog {url}: the file is read-only. Make it writable, or give another --db."
    assert f"directory {tmp_path / 'locked'} is not writable" in one_line_error(runs["directory"])
    assert runs["file"].stdout == runs["directory"].stdout == ""  # no scan ran: it prints its tables first
    assert list((tmp_path / "locked").iterdir()) == []
