"""Where the catalog lives: `--db URL`, else $SUPERWEIGHTS_DB, else an SQLite file in SUPERWEIGHTS_HOME.

Two backends: an embedded SQLite file (`sqlite:///PATH`) and a PostgreSQL server
(`postgresql://...`, driven by psycopg 3). URLs are parsed here in SQLAlchemy's format
(`dialect[+driver]://user:password@host:port/database?key=value`, user and password
percent-encoded), without SQLAlchemy: the read commands never import it (it takes 0.25-0.5 s).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from catalog import settings
from db.errors import BadCatalogURLError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}
URL_FORM = re.compile(  # SQLAlchemy's own pattern (sqlalchemy.engine.url._parse_url)
    r"""(?P<scheme>[\w+]+)://
        (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
        (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
        (?:/(?P<database>[^?]*))?
        (?:\?(?P<query>.*))?$""",
    re.X,
)


@dataclass(frozen=True)
class CatalogURL:
    """A parsed catalog URL. `display` hides the password: use it in every message."""

    text: str  # as the user wrote it
    backend: str  # "sqlite" | "postgresql"
    path: Path | None  # the SQLite file
    default: bool  # the embedded default location, created on first use
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        match = URL_FORM.match(self.text)
        return self.text if self.password is None or match is None else _masked(match)

    def sqlalchemy_url(self) -> URL:
        """The URL with the driver SQLAlchemy uses (for the writers and migrations only)."""
        from sqlalchemy.engine import URL

        if self.backend == "sqlite":
            return URL.create("sqlite", database=str(self.path))
        return URL.create("postgresql+psycopg", self.username, self.password, self.host, self.port, self.database, self.query)

    def libpq_dsn(self, *, read_only: bool = False) -> str:
        """The keyword/value connection string of a PostgreSQL URL (psycopg, DuckDB's postgres extension)."""
        params = {"host": self.host, "port": self.port, "dbname": self.database, "user": self.username, "password": self.password}
        params.update(self.query)
        if read_only:
            params["options"] = "-c default_transaction_read_only=on"
        return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items() if v is not None)


def _masked(match: re.Match[str]) -> str:
    """The URL with its password written as SQLAlchemy writes it hidden: ***."""
    start, end = match.span("password")
    return match.string[:start] + "***" + match.string[end:]


def default_url() -> str:
    return f"sqlite:///{settings.home() / 'catalog.db'}"


def locate(url: str | None = None) -> CatalogURL:
    """Parse the catalog URL the user chose (or the default), or raise `BadCatalogURLError`."""
    chosen = url or os.environ.get("SUPERWEIGHTS_DB") or default_url()
    return parse(chosen, default=not url and not os.environ.get("SUPERWEIGHTS_DB"))


def parse(text: str, *, default: bool = False) -> CatalogURL:
    match = URL_FORM.match(text)
    if match is None:
        raise BadCatalogURLError(text, "not a database URL")
    scheme, database = match["scheme"], match["database"]
    if scheme == "sqlite":
        if not database or database == ":memory:":
            raise BadCatalogURLError(text, "an SQLite catalog needs a file path (sqlite:///relative.db or sqlite:////absolute.db)")
        return CatalogURL(text, "sqlite", Path(database).expanduser(), default)
    if scheme not in POSTGRES_SCHEMES:
        raise BadCatalogURLError(text, f"unsupported scheme {scheme!r}")
    if not database:
        raise BadCatalogURLError(text, "no database name after the host")
    try:
        port = int(match["port"]) if match["port"] else None
    except ValueError as exc:
        raise BadCatalogURLError(text, f"port {match['port']!r} is not a number") from exc
    username, password = match["username"], match["password"]
    return CatalogURL(
        text, "postgresql", None, default, unquote(username) if username else None,
        unquote(password) if password is not None else None, match["ipv6host"] or match["ipv4host"], port, database,
        dict(parse_qsl(match["query"] or "")),
    )


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
