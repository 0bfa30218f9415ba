"""Typed errors of the catalog. Each names the URL, model or statement it is about, and the fix.

They subclass `SuperweightsError`, so `catalog.cli.main` prints them as one line, exit status 1.
"""

from __future__ import annotations

from pathlib import Path

from catalog.errors import SuperweightsError

URL_FORMS = "sqlite:///PATH (embedded file) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME"


class CatalogError(SuperweightsError):
    """Base class of the catalog's errors."""


class BadCatalogURLError(CatalogError, ValueError):
    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"--db {url!r}: {problem}. Give {URL_FORMS}.")
        self.url = url


class CatalogUnreachableError(CatalogError, ConnectionError):
    """The server does not answer, refuses the login, or the file cannot be opened."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"catalog {url}: cannot connect ({reason}). Check the server, the credentials and --db / SUPERWEIGHTS_DB.")
        self.url = url


class CatalogFileError(CatalogError, PermissionError):
    """An SQLite catalog file (or its directory) that cannot be opened as the command needs."""

    def __init__(self, url: str, problem: str, fix: str) -> None:
        super().__init__(f"catalog {url}: {problem}. {fix}")
        self.url = url


class CatalogBusyError(CatalogError):
    """An SQLite catalog that another process kept locked for longer than this one waits
    (`db.dbapi.BUSY_WAIT_S`): its writer, or, in SQLite's rollback journal, a reader mid-query."""

    def __init__(self, url: str, waited: float) -> None:
        super().__init__(f"catalog {url}: locked by another process for over {waited:g} s (a survey or scan saving, a long "
                         "query). Try again once it is done.")
        self.url = url


class NotACatalogError(CatalogError, ValueError):
    """A database that is not a superweights catalog: not SQLite at all, or another program's tables."""

    def __init__(self, url: str, what: str) -> None:
        super().__init__(f"catalog {url}: not a superweights catalog ({what}). Give the catalog's --db, or a new file to start one.")
        self.url = url


class CatalogMissingError(CatalogError, FileNotFoundError):
    def __init__(self, url: str) -> None:
        super().__init__(f"catalog {url}: no such database file. Scan a model into it first, or run `superweights db upgrade --db {url}`.")
        self.url = url


class CatalogOutOfDateError(CatalogError):
    """A server database whose schema is not at the migrations' head (servers are never upgraded implicitly)."""

    def __init__(self, url: str, current: str | None, head: str) -> None:
        super().__init__(f"catalog {url}: schema at revision {current or 'none'}, this version needs {head}. Run `superweights db upgrade "
                         f"--db {url}`.")
        self.url = url


class CatalogTooNewError(CatalogError):
    """A schema revision these migrations do not know: a newer superweights created it."""

    def __init__(self, url: str, current: str) -> None:
        super().__init__(f"catalog {url}: schema at revision {current}, newer than this version knows. Upgrade superweights (pip install "
                         f"-U superweight-catalog).")
        self.url = url


class UnsavedScanError(CatalogError):
    """A finished scan the catalog could not take, kept in a scan JSON file so that it is not lost."""

    def __init__(self, problem: CatalogError, kept: Path) -> None:
        super().__init__(f"{problem} The scan is kept in {kept}: `superweights db save {kept}` adds it to the catalog.")
        self.kept = kept


class ScanFileError(CatalogError, ValueError):
    """A file given to `db save` that is not a scan JSON this version reads."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a scan JSON this version can save ({reason}); give a file written by "
                         "`superweights scan --json`.")
        self.path = path


class CatalogWriteError(CatalogError):
    def __init__(self, url: str, source: str, reason: str) -> None:
        super().__init__(f"catalog {url}: could not save the scan of {source} ({reason}); nothing was written.")
        self.url = url
        self.source = source


class QueryError(CatalogError, ValueError):
    """A statement DuckDB cannot parse or run (syntax error, unknown table or column...)."""

    def __init__(self, sql: str, reason: str) -> None:
        flat = " ".join(reason.split()).split(" LINE ")[0]  # one line, without DuckDB's caret excerpt
        super().__init__(f"SQL {_short(sql)!r}: {_short(flat, 300)}")
        self.sql = sql


class QueryStoppedError(CatalogError):
    """A query stopped by its `--timeout` or by Ctrl-C (exit status 130, as for any interrupt)."""

    def __init__(self, sql: str, reason: str, timeout: float | None) -> None:
        if reason == "timeout":
            problem = f"stopped after {timeout:g}s (--timeout); narrow it (WHERE, LIMIT) or raise --timeout (0: no limit)."
        else:
            problem = "interrupted (Ctrl-C)."
        super().__init__(f"SQL {_short(sql)!r}: {problem}")
        self.sql = sql
        self.exit_code = 1 if reason == "timeout" else 130


class WriteRefusedError(CatalogError, PermissionError):
    def __init__(self, sql: str, kind: str) -> None:
        super().__init__(f"SQL {_short(sql)!r}: {kind} refused; `superweights sql` runs one read-only SELECT (or WITH, EXPLAIN, DESCRIBE, "
                         f"SHOW).")
        self.sql = sql


class UnknownModelError(CatalogError, LookupError):
    def __init__(self, model: str, url: str) -> None:
        shown = model if model.strip() else repr(model)  # a blank name is quoted, so the line still names it
        super().__init__(
            f"{shown}: not in the catalog {url}. Give a source or repo id as scanned, or any unique part of one; "
            "`superweights sql \"SELECT source, repo_id FROM models\"` lists them."
        )
        self.model = model


class NoSuccessfulScanError(CatalogError, LookupError):
    def __init__(self, model: str, url: str) -> None:
        super().__init__(f"{model}: every scan of it in the catalog {url} failed; scan it again (`superweights scan`).")
        self.model = model


class AmbiguousModelError(CatalogError, LookupError):
    def __init__(self, model: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
        super().__init__(f"{model}: matches {len(matches)} models ({shown}); give more of the name.")
        self.model = model


def _short(sql: str, limit: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
