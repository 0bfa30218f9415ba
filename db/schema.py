"""Which schema revision a catalog database is at, and opening a catalog checked against this
version's schema.

The read commands start here, so it costs one query on the version table and no Alembic (whose
runtime takes 0.3-0.6 s to import); Alembic is loaded only when a database is migrated
(`db.migrate`). The revisions this version knows are its migration files: `NNNN_*.py` holds
revision "NNNN" (`tests/test_db_migrations.py` checks that Alembic reads the same history).

Rules: a read-only open never creates or migrates; no open migrates a database that another
program made (tables but no version table) or that a newer superweights made (an unknown revision).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

from catalog.errors import BadOptionError
from db.engine import engine_for
from db.errors import CatalogOutOfDateError, CatalogTooNewError, NotACatalogError
from db.location import CatalogURL, locate

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


def current_on(connection: Connection) -> str | None:
    """The database's revision (None: no superweights schema). The history is linear: one row."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def foreign_tables(connection: Connection) -> list[str]:
    """Tables of another program: any, when the database has no version table."""
    tables = inspect(connection).get_table_names()
    return [] if VERSION_TABLE in tables else sorted(tables)


def needs_upgrade(connection: Connection, display: str, may_upgrade: bool) -> bool:
    """Whether the schema is older than this version's; refuses what this version must not touch."""
    current = current_on(connection)
    if current == head():
        return False
    if current is not None and current not in revisions():
        raise CatalogTooNewError(display, current)
    if current is None and (tables := foreign_tables(connection)):
        raise NotACatalogError(display, f"it holds tables of its own ({', '.join(tables[:4])}) and no superweights schema")
    if not may_upgrade:
        raise CatalogOutOfDateError(display, current, head())
    return True


def open_catalog(url: str | None, *, read_only: bool) -> tuple[CatalogURL, Engine]:
    """The catalog at `url` (None: the default), checked to be at this version's schema. An
    embedded file that is new or older is migrated unless `read_only`; a server never is."""
    location = locate(url)
    engine = engine_for(location, read_only=read_only)
    may_upgrade = not read_only and location.backend == "sqlite"
    with engine.connect() as connection:
        if not needs_upgrade(connection, location.display, may_upgrade):
            return location, engine
    from db import migrate  # Alembic, only to migrate

    with migrate.exclusive(engine) as connection:  # another process may be creating it too
        if needs_upgrade(connection, location.display, may_upgrade):
            migrate.upgrade_on(connection)
    return location, engine


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str, str | None]:
    """Migrate the catalog at `url` (servers too) to `revision`; returns its display URL and revision.
    A catalog already at `revision` is left alone, and Alembic is not loaded for it."""
    target = head() if revision == "head" else revision
    if target not in revisions():
        _known_to_alembic(revision)
    location = locate(url)
    engine = engine_for(location)
    with engine.connect() as connection:
        if current_on(connection) == target:
            return location.display, target
    from db import migrate  # Alembic, only to migrate

    with migrate.exclusive(engine) as connection:
        needs_upgrade(connection, location.display, may_upgrade=True)
        migrate.upgrade_on(connection, revision)
    return location.display, migrate.current(engine)


def _known_to_alembic(revision: str) -> None:
    """Alembic's other names of a revision (`base`, a unique prefix, `head-1`), else a usage error."""
    from db import migrate

    if not migrate.known(revision):
        raise BadOptionError("--revision", f"unknown revision {revision!r}; known: head, {', '.join(revisions())}.")
