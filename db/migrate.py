"""Alembic, programmatically: the same migrations that `alembic -x db=URL upgrade head` runs.

The migrations ship inside the package (db/migrations), so an installed package can upgrade
without the repository's alembic.ini. Migrations of one database run one at a time
(`exclusive`): two first uses of a new catalog file, or two `db upgrade`s, may start together.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from db.schema import MIGRATIONS, revision_of

LOCK_KEY = 0x5375706572  # the PostgreSQL advisory lock that migrators of a server database take


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def known(revision: str) -> bool:
    """Whether Alembic can migrate to `revision` (an id, or a name such as `head`)."""
    try:
        return script().get_revision(revision) is not None
    except CommandError:
        return False


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return revision_of(connection)


@contextmanager
def exclusive(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other migrator of this database runs at the same time; check the
    revision inside it, since the one read before waiting may be out of date."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            with open(str(engine.url.database), "rb") as file:  # flock: apart from SQLite's own locks
                fcntl.flock(file, fcntl.LOCK_EX)
                yield connection
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield connection


def upgrade_on(connection: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(connection), revision)


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade to `revision` in one transaction; returns the revision the database is at."""
    with exclusive(engine) as connection:
        upgrade_on(connection, revision)
    return current(engine)


def downgrade(engine: Engine, revision: str = "base") -> str | None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)
    return current(engine)
