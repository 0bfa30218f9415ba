"""SQLAlchemy engines for a catalog URL: foreign keys on for SQLite, a short connect timeout for servers,
and connection failures turned into typed errors.

Rules:
- A read-only engine cannot write: an SQLite file is opened with `mode=ro` (and must exist), a
  server session is `default_transaction_read_only`. Nothing is created, not even a directory.
- A writing engine checks up front that it could write (the file, and its directory, where SQLite
  keeps its journal), so a scan does not find out after hours that its catalog is read-only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from catalog.errors import first_line
from db.errors import CatalogFileError, CatalogMissingError, CatalogUnreachableError, NotACatalogError
from db.location import CatalogURL

CONNECT_TIMEOUT_S = 5
READ_ONLY_SESSION = "-c default_transaction_read_only=on"


def engine_for(location: CatalogURL, *, read_only: bool = False) -> Engine:
    """An engine whose first connection is checked. An SQLite file is created unless `read_only`."""
    if location.backend == "sqlite":
        engine = _sqlite_engine(location, read_only)
    else:
        options = {"options": READ_ONLY_SESSION} if read_only else {}
        engine = create_engine(location.url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S, **options})
    check_connection(engine, location)
    return engine


def _sqlite_engine(location: CatalogURL, read_only: bool) -> Engine:
    path = location.path
    assert path is not None
    if read_only:
        if not path.exists():
            raise CatalogMissingError(location.display)
        uri = f"{path.absolute().as_uri()}?mode=ro"
        return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=NullPool)
    if location.default:
        path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(path, location.display)
    engine = create_engine(location.url, poolclass=NullPool)
    event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def check_writable(path: Path, display: str) -> None:
    """The file (when it exists) and its directory must be writable: SQLite writes its journal there."""
    directory = path.parent
    if not directory.is_dir():
        raise CatalogFileError(display, f"directory {directory} does not exist", "Create it, or give another --db.")
    if path.exists() and not os.access(path, os.W_OK):
        raise CatalogFileError(display, "the file is read-only", "Make it writable, or give another --db.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CatalogFileError(display, f"directory {directory} is not writable (SQLite keeps its journal next to the file)",
                               "Give a --db in a directory you can write.")


def _sqlite_foreign_keys(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """SQLite ignores ON DELETE CASCADE unless asked, per connection."""
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def check_connection(engine: Engine, location: CatalogURL) -> None:
    """Connect once; for SQLite also read the schema, which is where a file that is not a database shows."""
    try:
        with engine.connect() as connection:
            if location.backend == "sqlite":
                connection.execute(text("SELECT count(*) FROM sqlite_master"))
    except DBAPIError as exc:
        reason = first_line(exc.orig)
        if location.backend != "sqlite":
            raise CatalogUnreachableError(location.display, reason) from exc
        if "not a database" in reason:
            raise NotACatalogError(location.display, "the file is not an SQLite database") from exc
        raise CatalogFileError(location.display, f"cannot open the file ({reason})",
                               "Check the path and its permissions, or give another --db.") from exc
