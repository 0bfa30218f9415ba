"""SQLAlchemy engines for the writers of a catalog URL: foreign keys on for SQLite, a short connect
timeout for servers, and connection failures turned into typed errors (`db.dbapi.connection_error`).
Readers connect without SQLAlchemy (`db.dbapi`).

Rule: an engine checks up front that it could write (the file, and its directory, where SQLite
keeps its journal), so a scan does not find out after hours that its catalog is read-only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from db import dbapi
from db.dbapi import CONNECT_TIMEOUT_S, connection_error
from db.errors import CatalogFileError
from db.location import CatalogURL


def engine_for(location: CatalogURL) -> Engine:
    """An engine whose first connection is checked. An SQLite file is created when missing."""
    if location.backend == "sqlite":
        engine = _sqlite_engine(location)
    else:
        engine = create_engine(location.sqlalchemy_url(), poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    check_connection(engine, location)
    return engine


def _sqlite_engine(location: CatalogURL) -> Engine:
    path = location.path
    assert path is not None
    if location.default:
        path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(path, location.display)
    engine = create_engine(location.sqlalchemy_url(), poolclass=NullPool, connect_args={"timeout": dbapi.BUSY_WAIT_S})
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
        raise connection_error(location, exc.orig) from exc
