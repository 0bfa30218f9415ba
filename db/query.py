"""Read-only SQL over the catalog with DuckDB: the SQLite file attached READ_ONLY, a PostgreSQL
server through DuckDB's postgres extension in read-only transactions.

DuckDB would download its extensions from the internet; here they come from the pip packages
`duckdb-extension-sqlite` / `duckdb-extension-postgres` (pinned to duckdb's version), laid out
in a private extension directory the way DuckDB looks for them, with auto-install off.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb

from catalog.errors import first_line
from db.errors import CatalogError, CatalogUnreachableError, QueryError, WriteRefusedError
from db.location import CatalogURL, libpq_dsn
from db.models import TABLES
from db.repository import Catalog

ALIAS = "superweights"  # the attached catalog; `USE` makes its tables unqualified
READS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}  # SELECT covers WITH, DESCRIBE, SHOW, FROM-first
EXTENSIONS = {"sqlite": ("duckdb_extension_sqlite", "sqlite_scanner"), "postgresql": ("duckdb_extension_postgres", "postgres_scanner")}


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_sql(url: str | None, sql: str) -> QueryResult:
    """Run one read-only statement over the catalog at `url`."""
    check_read_only(sql)
    with connect(Catalog(url, read_only=True).location, lock=True) as con:
        try:
            cursor = con.execute(sql)
            return QueryResult([d[0] for d in cursor.description or []], cursor.fetchall())
        except duckdb.Error as exc:
            raise QueryError(sql, str(exc)) from exc


def export_parquet(url: str | None, out_dir: Path) -> list[Path]:
    """One Parquet file per catalog table in `out_dir`, each written whole or not at all."""
    location = Catalog(url, read_only=True).location
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with connect(location) as con:
        for table in TABLES:
            path = out_dir / f"{table}.parquet"
            tmp = out_dir / f".{table}.parquet.tmp"
            con.execute(f"COPY {table} TO {_literal(str(tmp))} (FORMAT parquet)")
            tmp.replace(path)
            written.append(path)
    return written


def check_read_only(sql: str) -> None:
    """Refuse all but one reading statement, judged by DuckDB's own parser."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(sql, str(exc)) from exc
    if not statements:
        raise QueryError(sql, "no statement")
    if len(statements) > 1:
        raise WriteRefusedError(sql, f"{len(statements)} statements")
    if statements[0].type not in READS:
        raise WriteRefusedError(sql, f"{statements[0].type.name} statement")


@contextmanager
def connect(location: CatalogURL, *, lock: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the catalog attached read-only as the default database.

    `lock`: no file system access and no setting changes afterwards (for user SQL).
    """
    con = duckdb.connect(config={
        "extension_directory": str(extension_directory()),
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    })
    try:
        _attach(con, location)
        con.execute("SET TimeZone = 'UTC'")  # times are stored in UTC; show them so
        if lock:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def _attach(con: duckdb.DuckDBPyConnection, location: CatalogURL) -> None:
    if location.backend == "sqlite":
        target, kind = str(location.path), "sqlite"
    else:
        target, kind = libpq_dsn(location.url, read_only=True), "postgres"
    con.execute(f"LOAD {EXTENSIONS[location.backend][1]}")
    try:
        con.execute(f"ATTACH {_literal(target)} AS {ALIAS} (TYPE {kind}, READ_ONLY)")
    except duckdb.Error as exc:
        raise CatalogUnreachableError(location.display, first_line(exc)) from exc
    con.execute(f"USE {ALIAS}")


@cache
def extension_directory() -> Path:
    """A private extension directory, `<dir>/v<duckdb version>/<platform>/<name>.duckdb_extension`,
    linking to the extension files of the pip packages. Removed at exit.
    """
    root = Path(tempfile.mkdtemp(prefix="superweights-duckdb-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    version = f"v{duckdb.__version__}"
    platform = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
    target = root / version / platform
    target.mkdir(parents=True)
    for package, name in EXTENSIONS.values():
        source = files(package) / "extensions" / version / f"{name.split('_')[0]}.duckdb_extension"
        if not source.is_file():
            raise CatalogError(f"DuckDB extension {name} for duckdb {duckdb.__version__} not found; run `pip install {package.replace('_', '-')}=={duckdb.__version__}`.")
        (target / f"{name}.duckdb_extension").symlink_to(Path(str(source)))
    return root


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
