"""SQLAlchemy engines for a catalog URL: foreign keys on for SQLite, a short connect timeout for servers,
and connection failures turned into typed errors.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from catalog.errors import first_line
from db.errors import CatalogMissingError, CatalogUnreachableError
from db.location import CatalogURL

CONNECT_TIMEOUT_S = 5


def engine_for(location: CatalogURL, *, create: bool = True) -> Engine:
    """An engine whose first connection is checked. An SQLite file is created only when `create`."""
    if location.backend == "sqlite":
        engine = _sqlite_engine(location, create)
    else:
        engine = create_engine(location.url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    check_connection(engine, location)
    return engine


def _sqlite_engine(location: CatalogURL, create: bool) -> Engine:
    path = location.path
    assert path is not None
    if location.default:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not create:
        raise CatalogMissingError(location.display)
    if not path.parent.is_dir():
        raise CatalogUnreachableError(location.display, f"directory {path.parent} does not exist")
    engine = create_engine(location.url, poolclass=NullPool)
    event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """SQLite ignores ON DELETE CASCADE unless asked, per connection."""
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def check_connection(engine: Engine, location: CatalogURL) -> None:
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise CatalogUnreachableError(location.display, first_line(exc.orig)) from exc
