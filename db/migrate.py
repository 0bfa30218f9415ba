"""Alembic, programmatically: the same migrations that `alembic -x db=URL upgrade head` runs.

The migrations ship inside the package (db/migrations), so an installed package can upgrade
without the repository's alembic.ini.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade to `revision` in one transaction; returns the revision the database is at."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
    return current(engine)


def downgrade(engine: Engine, revision: str = "base") -> str | None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)
    return current(engine)
