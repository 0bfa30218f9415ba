"""Read-only SQL over the catalog with DuckDB: the SQLite file attached READ_ONLY, a PostgreSQL
server through DuckDB's postgres extension in read-only transactions.

DuckDB would download its extensions from the internet; here they come from the pip packages
`duckdb-extension-sqlite` / `duckdb-extension-postgres` (pinned to duckdb's version), loaded by
path under the file name DuckDB expects (a link in a private directory), with auto-install off.

Rules for the user's SQL (`run_sql`):
- It runs in a sandbox: a DuckDB that holds a snapshot of the catalog's tables and nothing else.
  The sandbox never loaded an extension (the scanners' `sqlite_scan`, `postgres_query`... would
  read any file or server), cannot reach files or the network, and its settings are locked.
- It is one reading statement (judged by DuckDB's parser), stopped after `--timeout` seconds or
  on Ctrl-C, and at most `--max-rows` rows come back (the result says when it was cut).
"""

from __future__ import annotations

import atexit
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb

from catalog.errors import UnwritableOutputError, first_line
from catalog.output import output_file
from db.errors import CatalogError, CatalogUnreachableError, QueryError, QueryStoppedError, WriteRefusedError
from db.limits import QueryLimits
from db.location import CatalogURL
from db.schema import TABLES, check_readable

ALIAS = "superweights"  # the attached catalog; `USE` makes its tables unqualified
READS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}  # SELECT covers WITH, DESCRIBE, SHOW, FROM-first
EXTENSIONS = {"sqlite": ("duckdb_extension_sqlite", "sqlite_scanner"), "postgresql": ("duckdb_extension_postgres", "postgres_scanner")}
EXTENSION_FUNCTION = re.compile(r'with name "?(\w+)"? is not in the catalog, but it exists in the \w+ extension')
WATCH_S = 0.05  # how often the watchdog looks at the clock and for a Ctrl-C
NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    cut: bool = False  # the query had more rows than `max_rows`; `rows` holds the first ones


def run_sql(url: str | None, sql: str, limits: QueryLimits = QueryLimits()) -> QueryResult:
    """Run one read-only statement over the catalog at `url`, within `limits`."""
    check_read_only(sql)
    with sandbox(check_readable(url)) as con, stoppable(con, limits.timeout) as stop:
        try:
            cursor = con.execute(sql)
            rows = cursor.fetchall() if limits.max_rows is None else cursor.fetchmany(limits.max_rows + 1)
        except duckdb.Error as exc:
            raise (stop.error(sql) or QueryError(sql, _reason(exc))) from exc
        if stopped := stop.error(sql):  # Ctrl-C as the last rows came
            raise stopped
        cut = limits.max_rows is not None and len(rows) > limits.max_rows
        return QueryResult([d[0] for d in cursor.description or []], rows[: limits.max_rows], cut)


def _reason(exc: duckdb.Error) -> str:
    """DuckDB's message, except its advice to install an extension: here none may be loaded."""
    if missing := EXTENSION_FUNCTION.search(str(exc)):
        return f"{missing.group(1)} is not available: `superweights sql` reads the catalog's tables and nothing else."
    return str(exc)


@dataclass
class Stop:
    """Why the running query is to stop, if it is: "timeout" or "interrupt" (Ctrl-C)."""

    timeout: float | None
    reason: str | None = None

    def error(self, sql: str) -> QueryStoppedError | None:
        return QueryStoppedError(sql, self.reason, self.timeout) if self.reason else None


@contextmanager
def stoppable(con: duckdb.DuckDBPyConnection, timeout: float | None) -> Iterator[Stop]:
    """Stop the connection's query at the timeout or on Ctrl-C (SIGINT, when in the main thread).

    A watchdog thread interrupts the connection until the block ends, so a Ctrl-C that comes
    just before the query starts stops it too (DuckDB forgets an interrupt between queries).
    """
    stop, done, start = Stop(timeout), threading.Event(), time.monotonic()

    def watch() -> None:
        while not done.wait(WATCH_S):
            if timeout and time.monotonic() - start > timeout:
                stop.reason = stop.reason or "timeout"
            if stop.reason:
                con.interrupt()

    def on_sigint(*_: object) -> None:
        stop.reason = stop.reason or "interrupt"

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    try:
        yield stop
    finally:
        done.set()
        watchdog.join()
        if main:
            signal.signal(signal.SIGINT, previous)


def export_parquet(url: str | None, out_dir: Path) -> list[Path]:
    """One Parquet file per catalog table in `out_dir`, each written whole or not at all
    (`catalog.output`); all of them are checked writable before the first is written."""
    location = check_readable(url)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnwritableOutputError("--parquet", out_dir, exc.strerror or str(exc)) from exc
    with ExitStack() as stack:
        outputs = {table: stack.enter_context(output_file(out_dir / f"{table}.parquet", "--parquet")) for table in TABLES}
        con = stack.enter_context(connect(location))
        for table, output in outputs.items():
            try:  # DuckDB's own temporary file would replace a symlink: `catalog.output` decides instead
                con.execute(f"COPY {table} TO {_literal(str(output.target))} (FORMAT parquet, USE_TMP_FILE false)")
            except duckdb.IOException as exc:
                raise UnwritableOutputError("--parquet", output.path, first_line(exc)) from exc
            output.commit()
    return [output.path for output in outputs.values()]


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
def sandbox(location: CatalogURL) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB holding a snapshot of the catalog's tables as `ALIAS`, and nothing else (see the rules above)."""
    with tempfile.TemporaryDirectory(prefix="superweights-sql-") as tmp:
        snapshot = _literal(str(Path(tmp) / "catalog.duckdb"))
        with connect(location) as source:
            source.execute(f"ATTACH {snapshot} AS snapshot")
            for table in TABLES:
                source.execute(f"CREATE TABLE snapshot.{table} AS FROM {ALIAS}.{table}")
            source.execute("DETACH snapshot")
        con = duckdb.connect(config={**NO_EXTENSIONS, "temp_directory": tmp})
        try:
            con.execute(f"ATTACH {snapshot} AS {ALIAS} (READ_ONLY)")
            con.execute(f"USE {ALIAS}")
            con.execute("SET TimeZone = 'UTC'")  # times are stored in UTC; show them so
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()


@contextmanager
def connect(location: CatalogURL) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the catalog attached read-only as the default database (for our own
    statements only: its scanner extension is loaded)."""
    con = duckdb.connect(config=NO_EXTENSIONS)
    try:
        _attach(con, location)
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def _attach(con: duckdb.DuckDBPyConnection, location: CatalogURL) -> None:
    if location.backend == "sqlite":
        target, kind = str(location.path), "sqlite"
    else:
        target, kind = location.libpq_dsn(read_only=True), "postgres"
    con.execute(f"LOAD {_literal(str(extension_file(location.backend)))}")
    try:
        con.execute(f"ATTACH {_literal(target)} AS {ALIAS} (TYPE {kind}, READ_ONLY)")
    except duckdb.Error as exc:
        raise CatalogUnreachableError(location.display, first_line(exc)) from exc
    con.execute(f"USE {ALIAS}")


@cache
def extension_file(backend: str) -> Path:
    """The scanner extension of `backend` from its pip package, as `<name>.duckdb_extension` (the
    name its entry point is found by) in a private directory removed at exit."""
    package, name = EXTENSIONS[backend]
    source = files(package) / "extensions" / f"v{duckdb.__version__}" / f"{name.split('_')[0]}.duckdb_extension"
    if not source.is_file():
        raise CatalogError(f"DuckDB extension {name} for duckdb {duckdb.__version__} not found; run `pip install "
                           f"{package.replace('_', '-')}=={duckdb.__version__}`.")
    root = Path(tempfile.mkdtemp(prefix="superweights-duckdb-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    link = root / f"{name}.duckdb_extension"
    link.symlink_to(Path(str(source)))
    return link


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
