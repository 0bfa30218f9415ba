"""The catalog's named reads, in plain SQL over a read-only DB-API connection (`db.dbapi`): the read
commands (`show`, `lineage`, `export --keep-list`, `report`) load no SQLAlchemy, which took half of
their start-up. The writer (`db.repository.Catalog`) inherits them.

Everything returns dataclasses (`StoredScan`, `LineageMatch`), never rows. SQLite hands JSON,
times and booleans back as text and integers: they are decoded by each column's declared type,
read from the database itself (`PRAGMA table_info`), so the decoding follows the schema; a
server's driver (psycopg) decodes them itself.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from catalog.result import CONFIRMED, SCHEMA, ModelInfo, ScanResult
from catalog.sources import canonical
from db import dbapi
from db.errors import AmbiguousModelError, NoSuccessfulScanError, UnknownModelError
from db.lineage import Coordinate, LineageMatch, ModelKey, rank
from db.location import CatalogURL
from db.schema import STATUS_OK, check_readable

SCAN_JSON = ("config", "timings", "environment", "summary")  # ScanResult keys kept as JSON on `scans`
CHILDREN = {"layers": "layer_stats", "super_weights": "super_weights", "ablations": "ablations"}  # ScanResult key: table
SQLITE_DECODERS: dict[str, Callable[[Any], Any]] = {"JSON": json.loads, "DATETIME": datetime.fromisoformat, "BOOLEAN": bool}


@dataclass
class StoredScan:
    """One scan as the catalog keeps it; `result` is rebuilt from the rows (None when it failed)."""

    scan_id: int
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime
    config_hash: str
    source: str
    repo_id: str | None
    revision: str | None
    result: ScanResult | None


class Rows:
    """Statements on one connection, their rows decoded to Python values."""

    def __init__(self, connection: dbapi.Connection) -> None:
        self.connection = connection
        self._sqlite = isinstance(connection, sqlite3.Connection)

    def __call__(self, sql: str, table: str | None = None, **params: Any) -> list[dict[str, Any]]:
        """The rows of `sql`; those of a one-table SELECT * name `table`, whose columns are decoded."""
        found = dbapi.rows(self.connection, sql, params)
        if not (self._sqlite and table):
            return found
        decoders = _sqlite_decoders(self.connection, table)
        return [{k: v if v is None or k not in decoders else decoders[k](v) for k, v in row.items()} for row in found]


def _sqlite_decoders(connection: sqlite3.Connection, table: str) -> dict[str, Callable[[Any], Any]]:
    declared = dbapi.rows(connection, f"SELECT name, type FROM pragma_table_info('{table}')")
    return {c["name"]: SQLITE_DECODERS[c["type"]] for c in declared if c["type"] in SQLITE_DECODERS}


class CatalogReader:
    """The catalog at `url` (None: $SUPERWEIGHTS_DB, else $SUPERWEIGHTS_HOME/catalog.db), read only: it
    must exist and be a catalog at the newest schema; nothing is created or migrated."""

    def __init__(self, url: str | None = None) -> None:
        self._opened(check_readable(url))

    def _opened(self, location: CatalogURL) -> None:
        self.location = location
        self.url: str = location.text
        self.display: str = location.display  # the URL with its password hidden, for messages

    @contextmanager
    def _rows(self) -> Iterator[Rows]:
        with dbapi.read_only(self.location) as connection:
            yield Rows(connection)

    def scans(self) -> list[StoredScan]:
        """Every scan, newest first."""
        with self._rows() as rows:
            return _stored(rows, "TRUE", {})

    def show(self, model: str) -> list[StoredScan]:
        """The scans of the models whose source or repo id is `model`, newest first."""
        with self._rows() as rows:
            ids, params = dbapi.in_list("model", self._model_ids(rows, model))
            return _stored(rows, f"model_id IN {ids}", params)

    def latest(self, model: str) -> StoredScan:
        """The newest successful scan of the models `model` names (as `show`)."""
        scan = next((s for s in self.show(model) if s.result is not None), None)
        if scan is None:
            raise NoSuccessfulScanError(model, self.display)
        return scan

    def lineage(self, model: str) -> list[LineageMatch]:
        """Catalog models sharing `model`'s confirmed super-weight coordinates, most shared first."""
        with self._rows() as rows:
            ids = set(self._model_ids(rows, model))
            keys = {m["id"]: ModelKey(m["source"], m["repo_id"], m["revision"], m["family"], m["base_model"])
                    for m in rows("SELECT id, source, repo_id, revision, family, base_model FROM models")}
            coordinates: dict[int, set[Coordinate]] = {}
            for found in rows('SELECT scans.model_id, s.layer, s."row", s.col FROM scans JOIN super_weights s ON s.scan_id = scans.id '
                              "WHERE scans.status = :ok AND s.verdict = :confirmed", ok=STATUS_OK, confirmed=CONFIRMED):
                coordinates.setdefault(found["model_id"], set()).add((found["layer"], found["row"], found["col"]))
        mine = set().union(*(coordinates.get(i, set()) for i in ids))
        others = {key: coordinates.get(i, set()) for i, key in keys.items() if i not in ids}
        return rank(keys[min(ids)], mine, others)

    def has_scan(self, source: str, revision: str | None, config_hash: str, *, fingerprint: str | None = None,
                 include_failed: bool = False) -> bool:
        """Whether this config was scanned on (source, revision), or on these weights (`fingerprint`) under any name."""
        same = f"(m.source = :source AND {_same('m.revision', revision)})"
        where = [f"({same} OR m.fingerprint = :fingerprint)" if fingerprint else same, "s.config_hash = :config_hash"]
        if not include_failed:
            where.append("s.status = :ok")
        with self._rows() as rows:
            return bool(rows(f"SELECT s.id FROM scans s JOIN models m ON m.id = s.model_id WHERE {' AND '.join(where)} LIMIT 1",
                             source=source, revision=revision, fingerprint=fingerprint, config_hash=config_hash, ok=STATUS_OK))

    def known_as(self, info: ModelInfo) -> str | None:
        """How the catalog already knows the weights `info` describes, as a line for the user: under
        another name (the scan joins that model), or not, while their name holds other weights (a
        new revision of it). None: nothing to say."""
        if not info.fingerprint:
            return None
        with self._rows() as rows:
            same = rows("SELECT source, revision FROM models WHERE fingerprint = :fingerprint ORDER BY id LIMIT 1",
                        fingerprint=info.fingerprint)
            if same and (same[0]["source"], same[0]["revision"]) != (info.source, info.revision):
                return (f"{info.source}: the same weights as {named(same[0])} in the catalog (sha256 {info.fingerprint[:12]}); "
                        "saved there")
            if same:
                return None
            others = rows(f"SELECT source, revision FROM models WHERE source = :source AND fingerprint IS NOT NULL "
                          f"AND {_distinct('revision', info.revision)} ORDER BY id", source=info.source, revision=info.revision)
        if others:
            return (f"{info.source}: the weights differ from those catalogued under this name ({named(others[-1])}); "
                    f"saved as a new revision {info.revision}")
        return None

    def _model_ids(self, rows: Rows, model: str) -> list[int]:
        """The models `model` names: those whose source or repo id it is (a local path however typed:
        `./m` is the source scanned as `m`); else the one model (all its revisions) whose name without
        the organization is it; else the one whose source or repo id contains it. Case is ignored
        after the exact match; an empty `model` names none."""
        if not model.strip():
            raise UnknownModelError(model, self.display)
        exact, params = dbapi.in_list("name", sorted({model, canonical(model)}))
        if ids := [r["id"] for r in rows(f"SELECT id FROM models WHERE source IN {exact} OR repo_id = :model", model=model, **params)]:
            return ids
        found = rows("SELECT id, repo_id, source FROM models WHERE lower(source) LIKE :pattern ESCAPE '\\' "
                     "OR lower(repo_id) LIKE :pattern ESCAPE '\\'", pattern=f"%{_escape_like(model.lower())}%")
        by_name: dict[str, list[int]] = {}
        for row in found:
            by_name.setdefault(row["repo_id"] or row["source"], []).append(row["id"])
        named_so = [name for name in by_name if name.rsplit("/", 1)[-1].lower() == model.lower()]
        if len(named_so) == 1:
            return by_name[named_so[0]]
        if len(by_name) > 1:
            raise AmbiguousModelError(model, sorted(by_name))
        if not by_name:
            raise UnknownModelError(model, self.display)
        return next(iter(by_name.values()))


def _stored(rows: Rows, where: str, params: dict[str, Any]) -> list[StoredScan]:
    """The scans `where` selects (a condition on `scans`), newest first, each with its model and rows."""
    scans = rows(f"SELECT * FROM scans WHERE {where} ORDER BY finished_at DESC, id DESC", "scans", **params)
    models = {m["id"]: m for m in rows(f"SELECT * FROM models WHERE id IN (SELECT model_id FROM scans WHERE {where})", "models", **params)}
    children: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for name, table in CHILDREN.items():
        for row in rows(f"SELECT * FROM {table} WHERE scan_id IN (SELECT id FROM scans WHERE {where}) ORDER BY id", table, **params):
            children.setdefault((name, row.pop("scan_id")), []).append(row)
    return [_stored_scan(scan, models[scan["model_id"]], children) for scan in scans]


def _stored_scan(scan: dict[str, Any], model: dict[str, Any], children: dict[tuple[str, int], list[dict[str, Any]]]) -> StoredScan:
    rows = {name: children.get((name, scan["id"]), []) for name in CHILDREN}
    result = _result(scan, model, rows) if scan["status"] == STATUS_OK else None
    return StoredScan(scan["id"], scan["status"], scan["error"], utc(scan["started_at"]), utc(scan["finished_at"]), scan["config_hash"],
                      model["source"], model["repo_id"], model["revision"], result)


def _result(scan: dict[str, Any], model: dict[str, Any], children: dict[str, list[dict[str, Any]]]) -> ScanResult:
    """Rebuild the scan's public dict from its rows; `from_dict` ignores what it does not know."""
    facts = {k: v for k, v in model.items() if k != "id"} | {"dtype": scan["dtype"], "tags": model["tags"] or []}
    data = {"schema": SCHEMA, "model": facts, "config_hash": scan["config_hash"], **{k: scan[k] or {} for k in SCAN_JSON},
            "started_at": utc(scan["started_at"]).isoformat(), "finished_at": utc(scan["finished_at"]).isoformat()}
    for name, found in children.items():
        data[name] = [{k: v for k, v in row.items() if k != "id"} for row in found]
    return ScanResult.from_dict(data)


def _same(column: str, value: str | None) -> str:
    """SQL: `column` equals `value` (a parameter of that name), NULL equal to NULL."""
    return f"{column} IS NULL" if value is None else f"{column} = :{column.rsplit('.', 1)[-1]}"


def _distinct(column: str, value: str | None) -> str:
    """SQL: `column` differs from `value` (a parameter of that name), NULL differing from any value."""
    return f"{column} IS NOT NULL" if value is None else f"({column} IS NULL OR {column} <> :{column})"


def named(model: dict[str, Any]) -> str:
    """A model row as messages name it: source@revision."""
    return f"{model['source']}@{model['revision']}" if model["revision"] else model["source"]


def utc(moment: datetime) -> datetime:
    """Store and return UTC; a naive time is taken as UTC (SQLite keeps no zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _escape_like(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
