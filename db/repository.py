"""The catalog's repository: the only code that writes to it. Its reads are `db.reads`, inherited.

A save is one transaction keyed by (source, revision, config hash): it replaces an earlier scan
of that key. An embedded SQLite catalog is migrated to the newest schema on first use; a server
is not (`superweights db upgrade`), so one client cannot change a shared schema behind the
others' backs. Writes go through SQLAlchemy's ORM (`db.models`); migrations run one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from catalog.errors import first_line
from catalog.result import ScanResult, check_finite
from db import dbapi
from db.errors import CatalogBusyError, CatalogWriteError
from db.models import AblationRow, Base, LayerStatRow, Model, Scan, SuperWeightRow
from db.reads import SCAN_JSON, CatalogReader, utc
from db.schema import STATUS_FAILED, STATUS_OK, open_catalog

MODEL_FACTS = [c.name for c in Model.__table__.columns if c.name not in ("id", "source", "repo_id", "revision")]
ROW_TYPES = {"layers": LayerStatRow, "super_weights": SuperWeightRow, "ablations": AblationRow}  # the tables of reads.CHILDREN


class Catalog(CatalogReader):
    """The catalog at `url` (None: $SUPERWEIGHTS_DB, else $SUPERWEIGHTS_HOME/catalog.db), to write:
    an embedded file is created and migrated when it is new or older; a server never is
    (`superweights db upgrade`). Read commands use `db.reads.CatalogReader`."""

    def __init__(self, url: str | None = None) -> None:
        location, self._engine = open_catalog(url)
        self._opened(location)

    def save(self, result: ScanResult, *, started_at: datetime, finished_at: datetime) -> int:
        """Store a finished scan, replacing an earlier one of its key; returns the new scan id.
        A result holding NaN or inf is refused (`NonFiniteError`): SQL would store it as NULL."""
        info, data = result.model, result.to_dict()
        check_finite(data)
        self._check_fits(data, info.source)
        with self._writing(info.source) as session:
            model = _model_row(session, info.source, info.repo_id, info.revision, info.fingerprint)
            for name, value in _facts(data).items():
                setattr(model, name, value)
            scan = _scan_row(result, data, model.id, started_at, finished_at)
            return _replace(session, scan)

    def record_failure(
        self, *, source: str, repo_id: str | None, revision: str | None, config_hash: str, config: dict,
        error: str, started_at: datetime, finished_at: datetime,
    ) -> int:
        """Store a scan that failed (the model facts stay as they were: a load may have failed)."""
        with self._writing(source) as session:
            model = _model_row(session, source, repo_id, revision)
            scan = Scan(
                model_id=model.id, config_hash=config_hash, config=config, status=STATUS_FAILED, error=error,
                started_at=utc(started_at), finished_at=utc(finished_at),
            )
            return _replace(session, scan)

    def _check_fits(self, data: dict[str, Any], source: str) -> None:
        """Refuse, before anything is written, a value its column cannot hold on every backend:
        SQLite keeps a string past the column's length or an integer past 32 bits, which
        PostgreSQL refuses, so that one catalog would take a scan that another cannot."""
        rows = [(Model, data["model"], "model"), (Scan, data, "scan"),
                *((row_type, item, f"{name}[{i}]") for name, row_type in ROW_TYPES.items() for i, item in enumerate(data[name]))]
        for row_type, values, where in rows:
            for column in row_type.__table__.columns:
                problem = _unfit(values.get(column.key), column.type)
                if problem:
                    raise CatalogWriteError(self.display, source[:200], f"{where}.{column.key} is {problem}")

    @contextmanager
    def _writing(self, source: str) -> Iterator[Session]:
        """One transaction: all of it is written, or (on any database error) none of it."""
        try:
            with Session(self._engine) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            reason = first_line(getattr(exc, "orig", None) or exc)
            if "database is locked" in reason:
                raise CatalogBusyError(self.display, dbapi.BUSY_WAIT_S) from exc
            raise CatalogWriteError(self.display, source, reason) from exc


def _unfit(value: object, kind: TypeEngine) -> str | None:
    """What is wrong with `value` for a column of type `kind`, or None."""
    length = getattr(kind, "length", None) if isinstance(kind, String) else None
    if isinstance(value, str) and length and len(value) > length:
        return f"{len(value)} characters, more than its column's {length}"
    bits = 64 if isinstance(kind, BigInteger) else 32
    if isinstance(value, int) and isinstance(kind, Integer) and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        return f"{value}, past its column's {bits}-bit integers"
    return None


def _model_row(session: Session, source: str, repo_id: str | None, revision: str | None, fingerprint: str | None = None) -> Model:
    """The model row of these weights (`fingerprint`, whatever they were called), else of (source,
    revision), else a local source's row from before fingerprints (adopted), else a new one."""
    model = (_by_fingerprint(session, fingerprint)
             or session.scalar(select(Model).where(Model.source == source, Model.revision.is_not_distinct_from(revision)))
             or (fingerprint and session.scalar(select(Model).where(
                 Model.source == source, Model.repo_id.is_(None), Model.fingerprint.is_(None)).order_by(Model.id))))
    if model is None:
        model = Model(source=source, repo_id=repo_id, revision=revision)
        session.add(model)
        session.flush()
    if model.fingerprint is None and model.source == source:
        model.revision = revision  # an adopted row takes the revision its fingerprint names
    model.repo_id = model.repo_id or repo_id
    return model


def _by_fingerprint(session: Session, fingerprint: str | None) -> Model | None:
    """The first-catalogued model of these weights."""
    if not fingerprint:
        return None
    return session.scalar(select(Model).where(Model.fingerprint == fingerprint).order_by(Model.id).limit(1))


def _replace(session: Session, scan: Scan) -> int:
    """Delete the scan of the same key (its rows cascade), then insert this one."""
    session.execute(delete(Scan).where(Scan.model_id == scan.model_id, Scan.config_hash == scan.config_hash))
    session.add(scan)
    session.flush()
    return scan.id


def _facts(data: dict[str, Any]) -> dict[str, Any]:
    """The model row's columns from a result's `to_dict()` (converted once per save: it deep-copies)."""
    model = data["model"]
    return {name: model[name] for name in MODEL_FACTS if name in model}


def _scan_row(result: ScanResult, data: dict[str, Any], model_id: int, started_at: datetime, finished_at: datetime) -> Scan:
    scan = Scan(
        model_id=model_id, status=STATUS_OK, started_at=utc(started_at), finished_at=utc(finished_at),
        dtype=result.model.dtype, device=result.environment.get("device"), config_hash=result.config_hash,
        **{k: data[k] for k in SCAN_JSON if k in data},
    )
    for name, row_type in ROW_TYPES.items():
        getattr(scan, name).extend(_row(row_type, item) for item in data[name])
    return scan


def _row(row_type: type[Base], item: dict[str, Any]) -> Base:
    columns = row_type.__table__.columns.keys()
    return row_type(**{k: v for k, v in item.items() if k in columns})
