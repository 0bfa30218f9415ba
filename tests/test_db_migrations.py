"""The Alembic migrations build exactly the ORM's schema, both ways, on both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from db import migrate
from db.engine import engine_for
from db.errors import CatalogOutOfDateError, CatalogTooNewError
from db.location import parse
from db.models import TABLES, Base
from db.repository import Catalog, upgrade

ROOT = Path(__file__).resolve().parents[1]


def _engine(url: str) -> Engine:
    return engine_for(parse(url))


def _differences(engine: Engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_head_matches_the_orm(empty_catalog_url):
    _, revision = upgrade(empty_catalog_url)
    assert revision == migrate.head()
    assert _differences(_engine(empty_catalog_url)) == []


def test_downgrade_to_base_then_upgrade_again(empty_catalog_url):
    engine = _engine(empty_catalog_url)
    migrate.upgrade(engine)
    assert migrate.downgrade(engine) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert migrate.upgrade(engine) == migrate.head()
    assert _differences(engine) == []


def test_alembic_command_line_uses_alembic_ini(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    subprocess.run([sys.executable, "-m", "alembic", "-x", f"db={url}", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True)
    assert migrate.current(_engine(url)) == migrate.head()


@pytest.mark.usefixtures("catalog_home")
def test_embedded_catalog_is_created_at_head_on_first_use(catalog_home):
    catalog = Catalog()
    assert catalog.url == f"sqlite:///{catalog_home / 'catalog.db'}"
    assert set(TABLES) <= set(inspect(_engine(catalog.url)).get_table_names())


@pytest.mark.postgres
def test_a_server_is_not_migrated_implicitly(postgres_server):
    url = postgres_server.create_database()
    with pytest.raises(CatalogOutOfDateError, match="superweights db upgrade"):
        Catalog(url)
    assert inspect(_engine(url)).get_table_names() == []


def test_a_catalog_from_a_newer_version_is_refused_untouched(catalog_url):
    engine = _engine(catalog_url)
    _stamp(engine, "f00d")
    try:
        with pytest.raises(CatalogTooNewError, match="revision f00d, newer than this version knows"):
            Catalog(catalog_url)
        assert migrate.current(engine) == "f00d"
    finally:
        _stamp(engine, migrate.head())  # the PostgreSQL catalog is shared by the session


def _stamp(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
