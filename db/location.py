"""Where the catalog lives: `--db URL`, else $SUPERWEIGHTS_DB, else an SQLite file in SUPERWEIGHTS_HOME.

Two backends: an embedded SQLite file (`sqlite:///PATH`) and a PostgreSQL server
(`postgresql://...`, driven by psycopg 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from catalog import settings
from db.errors import BadCatalogURLError

POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}


@dataclass(frozen=True)
class CatalogURL:
    """A parsed catalog URL. `display` hides the password: use it in every message."""

    url: URL  # with the driver SQLAlchemy uses
    given: URL  # as the user wrote it
    backend: str  # "sqlite" | "postgresql"
    path: Path | None  # the SQLite file
    default: bool  # the embedded default location, created on first use

    @property
    def display(self) -> str:
        return self.given.render_as_string(hide_password=True)

    @property
    def text(self) -> str:
        return self.given.render_as_string(hide_password=False)


def default_url() -> str:
    return f"sqlite:///{settings.home() / 'catalog.db'}"


def locate(url: str | None = None) -> CatalogURL:
    """Parse the catalog URL the user chose (or the default), or raise `BadCatalogURLError`."""
    chosen = url or os.environ.get("SUPERWEIGHTS_DB") or default_url()
    return parse(chosen, default=not url and not os.environ.get("SUPERWEIGHTS_DB"))


def parse(text: str, *, default: bool = False) -> CatalogURL:
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise BadCatalogURLError(text, "not a database URL") from exc
    if url.drivername == "sqlite":
        if not url.database or url.database == ":memory:":
            raise BadCatalogURLError(text, "an SQLite catalog needs a file path (sqlite:///relative.db or sqlite:////absolute.db)")
        return CatalogURL(url, url, "sqlite", Path(url.database).expanduser(), default)
    if url.drivername in POSTGRES_SCHEMES:
        if not url.database:
            raise BadCatalogURLError(text, "no database name after the host")
        return CatalogURL(url.set(drivername="postgresql+psycopg"), url, "postgresql", None, default)
    raise BadCatalogURLError(text, f"unsupported scheme {url.drivername!r}")


def libpq_dsn(url: URL, *, read_only: bool = False) -> str:
    """The keyword/value connection string of a PostgreSQL URL, for DuckDB's postgres extension."""
    params = {"host": url.host, "port": url.port, "dbname": url.database, "user": url.username, "password": url.password}
    params.update({k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()})
    if read_only:
        params["options"] = "-c default_transaction_read_only=on"
    return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items() if v is not None)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
