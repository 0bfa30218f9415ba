"""Which schema revision a catalog database is at, and opening a catalog checked against this
version's schema.

The read commands start here, so it costs one query on the version table through a plain DB-API
connection (`db.dbapi`): neither SQLAlchemy (0.25-0.5 s to import) nor Alembic (0.3-0.6 s) is
loaded to read; Alembic only when a database is migrated (`db.migrate`). The revisions this
version knows are its migration files: `NNNN_*.py` holds revision "NNNN"
(`tests/test_db_migrations.py` checks that Alembic reads the same history).

Rules: a read-only open never creates or migrates; no open migrates a database that another
program made (tables but no version table) or that a newer superweights made (an unknown revision).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from catalog.errors import BadOptionError
from db import dbapi
from db.errors import CatalogError, CatalogOutOfDateError, CatalogTooNewError, NotACatalogError
from db.location import CatalogURL, locate

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"
MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.py$")
STATUS_OK, STATUS_FAILED = "ok", "failed"  # of a scan (scans.status)
TABLES = ("models", "scans", "layer_stats", "super_weights", "ablations")  # as db.models declares them


@cache
def revisions() -> list[str]:
    """The schema revisions this version knows, newest first."""
    found = (MIGRATION_FILE.match(path.name) for path in (MIGRATIONS / "versions").iterdir())
    return sorted((match.group(1) for match in found if match), reverse=True)


def head() -> str:
    return revisions()[0]


def current_on(connection: dbapi.Connection) -> str | None:
    """The database's revision (None: no superweights schema, or migrated down to none). The
    history is linear: one row at most."""
    if VERSION_TABLE not in dbapi.table_names(connection):
        return None
    found = dbapi.rows(connection, f"SELECT version_num FROM {VERSION_TABLE}")
    return found[0]["version_num"] if found else None


def revision_of(connection: Connection) -> str | None:
    """`current_on` for an SQLAlchemy connection (a writer's, a migrator's)."""
    return current_on(connection.connection.dbapi_connection)


def needs_upgrade(connection: dbapi.Connection, display: str, may_upgrade: bool) -> bool:
    """Whether the schema is older than this version's; refuses what this version must not touch."""
    current = current_on(connection)
    if current == head():
        return False
    if current is not None and current not in revisions():
        raise CatalogTooNewError(display, current)
    if current is None and (tables := dbapi.table_names(connection)):
        raise NotACatalogError(display, f"it holds tables of its own ({', '.join(tables[:4])}) and no superweights schema")
    if not may_upgrade:
        raise CatalogOutOfDateError(display, current, head())
    return True


def check_readable(url: str | None) -> CatalogURL:
    """The catalog at `url` (None: the default), checked to exist and be at this version's schema;
    read-only: nothing is created or migrated, and SQLAlchemy is not loaded."""
    location = locate(url)
    with dbapi.read_only(location) as connection:
        needs_upgrade(connection, location.display, may_upgrade=False)
    return location


def open_catalog(url: str | None) -> tuple[CatalogURL, Engine]:
    """The catalog at `url` (None: the default) to write to: an embedded file that is new or older
    is migrated; a server must be at this version's schema (`superweights db upgrade`)."""
    from db.engine import engine_for

    location = locate(url)
    engine = engine_for(location)
    may_upgrade = location.backend == "sqlite"
    with engine.connect() as connection:
        if not needs_upgrade(connection.connection.dbapi_connection, location.display, may_upgrade):
            return location, engine
    from db import migrate  # Alembic, only to migrate

    with migrate.exclusive(engine) as connection:  # another process may be creating it too
        if needs_upgrade(connection.connection.dbapi_connection, location.display, may_upgrade):
            migrate.upgrade_on(connection)
    return location, engine


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str, str | None]:
    """Migrate the catalog at `url` (servers too) to `revision`; returns its display URL and revision.
    A catalog already at `revision` is left alone, read through `db.dbapi` only (neither SQLAlchemy
    nor Alembic is loaded for it)."""
    target = head() if revision == "head" else revision
    if target not in revisions():
        _known_to_alembic(revision)
    location = locate(url)
    if _readable_revision(location) == target:
        return location.display, target
    from db.engine import engine_for

    engine = engine_for(location)
    with engine.connect() as connection:
        if revision_of(connection) == target:
            return location.display, target
    from db import migrate  # Alembic, only to migrate

    with migrate.exclusive(engine) as connection:
        needs_upgrade(connection.connection.dbapi_connection, location.display, may_upgrade=True)
        migrate.upgrade_on(connection, revision)
    return location.display, migrate.current(engine)


def _readable_revision(location: CatalogURL) -> str | None:
    """The revision of a catalog that can be opened to read; None for one that cannot, whose
    writer (an engine) then says what is wrong, or creates it."""
    try:
        with dbapi.read_only(location) as connection:
            return current_on(connection)
    except CatalogError:
        return None


def _known_to_alembic(revision: str) -> None:
    """Alembic's other names of a revision (`base`, a unique prefix, `head-1`), else a usage error."""
    from db import migrate

    if not migrate.known(revision):
        raise BadOptionError("--revision", f"unknown revision {revision!r}; known: head, {', '.join(revisions())}.")
