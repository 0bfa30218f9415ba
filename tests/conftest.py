"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

from postgres_server import MISSING, PostgresServer, find_binaries


# -- the catalog (db/): each repository test runs on SQLite and on a real PostgreSQL server ---------


@pytest.fixture(scope="session")
def postgres_server():
    binaries = find_binaries()
    if binaries is None:
        (pytest.fail if os.environ.get("CI", "").lower() == "true" else pytest.skip)(MISSING)
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_catalog_url(request, tmp_path) -> str:
    """The URL of an empty database (an SQLite file not yet created, or a new PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def catalog_url(empty_catalog_url) -> str:
    """The URL of an empty catalog at the newest schema."""
    from db.repository import upgrade

    upgrade(empty_catalog_url)
    return empty_catalog_url


@pytest.fixture
def catalog_home(tmp_path, monkeypatch):
    """SUPERWEIGHTS_HOME in a temp dir and no SUPERWEIGHTS_DB: the default catalog is a fresh file."""
    monkeypatch.setenv("SUPERWEIGHTS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SUPERWEIGHTS_DB", raising=False)
    return tmp_path / "home"
