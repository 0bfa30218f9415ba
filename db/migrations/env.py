"""Alembic environment, used two ways:

- programmatically (`db.migrate`): the caller passes an open connection in `config.attributes`;
- from the command line at the repo root: `alembic [-x db=URL] upgrade head`, the URL defaulting
  like every other command (--db, $SUPERWEIGHTS_DB, the embedded SQLite file).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from db.engine import engine_for
from db.location import locate
from db.models import Base

config = context.config


def run(connection: Connection) -> None:
    # batch mode lets later migrations ALTER tables on SQLite (it recreates the table)
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    location = locate(context.get_x_argument(as_dictionary=True).get("db"))
    if context.is_offline_mode():
        context.configure(url=location.sqlalchemy_url(), target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    elif (connection := config.attributes.get("connection")) is not None:
        run(connection)
    else:
        with engine_for(location).connect() as connection:
            run(connection)
            connection.commit()


main()
