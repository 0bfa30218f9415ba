"""Plain DB-API access to a catalog database, without SQLAlchemy: sqlite3 for the embedded file,
psycopg for a server. The read commands use nothing else (SQLAlchemy takes 0.25-0.5 s to import,
sqlite3 a millisecond), and the schema check reads through it on whichever connection it is
handed, a writer's SQLAlchemy connection (its `dbapi_connection`) included.

SQL is written with `:name` placeholders (sqlite3's named style); psycopg gets `%(name)s`.

Rules: a connection opened here is read-only (an SQLite file with `mode=ro`, which must exist;
a server session with `default_transaction_read_only`), so it can neither create nor change a
catalog; failures to connect become the catalog's typed errors (`connection_error`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from catalog.errors import first_line
from db.errors import CatalogBusyError, CatalogError, CatalogFileError, CatalogMissingError, CatalogUnreachableError, NotACatalogError
from db.location import CatalogURL

Connection = Any  # a DB-API 2 connection: sqlite3.Connection or psycopg.Connection
CONNECT_TIMEOUT_S = 5
# How long an SQLite connection waits for another process's lock (SQLite's default: 5 s): a survey's
# saves and a scan's take well under a second each; a reader mid-query holds writers off (rollback journal).
BUSY_WAIT_S = 30
PLACEHOLDER = re.compile(r"(?<![:\w]):(\w+)")


@contextmanager
def read_only(location: CatalogURL) -> Iterator[Connection]:
    """A read-only connection to the catalog at `location`, checked as `connection_error` says."""
    connection = _open(location)
    try:
        yield connection
    finally:
        connection.close()


def _open(location: CatalogURL) -> Connection:
    if location.backend == "sqlite":
        assert location.path is not None
        if not location.path.exists():
            raise CatalogMissingError(location.display)
        try:
            connection = sqlite3.connect(f"{location.path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_WAIT_S)
            connection.execute("SELECT count(*) FROM sqlite_master")  # where a file that is not a database shows
        except sqlite3.Error as exc:
            raise connection_error(location, exc) from exc
        return connection
    import psycopg  # only for a server

    try:
        return psycopg.connect(location.libpq_dsn(read_only=True), connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise connection_error(location, exc) from exc


def connection_error(location: CatalogURL, exc: BaseException) -> CatalogError:
    """What a driver's failure to open the catalog means for the user, as a typed error."""
    reason = first_line(exc)
    if location.backend != "sqlite":
        return CatalogUnreachableError(location.display, reason)
    if "database is locked" in reason:
        return CatalogBusyError(location.display, BUSY_WAIT_S)
    if "not a database" in reason:
        return NotACatalogError(location.display, "the file is not an SQLite database")
    return CatalogFileError(location.display, f"cannot open the file ({reason})",
                            "Check the path and its permissions, or give another --db.")


def rows(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one statement, each a dict by column name."""
    if not isinstance(connection, sqlite3.Connection):
        sql = PLACEHOLDER.sub(r"%(\1)s", sql)
    cursor = connection.cursor()
    try:
        cursor.execute(sql, params or {})
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def table_names(connection: Connection) -> list[str]:
    """The database's own tables (SQLite's internal ones left out), sorted."""
    if isinstance(connection, sqlite3.Connection):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    else:
        sql = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
    return sorted(row["name"] for row in rows(connection, sql))


def in_list(name: str, values: list[Any]) -> tuple[str, dict[str, Any]]:
    """`IN (...)` over `values`: the placeholders `:name0, :name1, ...` and their parameters
    (`IN (NULL)`, which holds for no row, when `values` is empty)."""
    if not values:
        return "(NULL)", {}
    params = {f"{name}{k}": value for k, value in enumerate(values)}
    return "(" + ", ".join(f":{key}" for key in params) + ")", params
