"""The catalog's repository: the only code that writes to it, and the named reads others use.

Everything returns dataclasses (`StoredScan`, `LineageMatch`), never sessions or rows. A save is
one transaction keyed by (source, revision, config hash): it replaces an earlier scan of that key.
An embedded SQLite catalog is migrated to the newest schema on first use; a server is not
(`superweights db upgrade`), so one client cannot change a shared schema behind the others' backs.

Rules: a read-only command opens the catalog read-only (`Catalog(read_only=True)`) and never
creates or migrates it (the schema checks: `db.schema`); migrations run one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, joinedload, selectinload

from catalog.errors import first_line
from catalog.result import CONFIRMED, SCHEMA, ModelInfo, ScanResult, check_finite
from catalog.sources import canonical
from db.errors import AmbiguousModelError, CatalogWriteError, NoSuccessfulScanError, UnknownModelError
from db.lineage import Coordinate, LineageMatch, ModelKey, rank
from db.models import AblationRow, Base, LayerStatRow, Model, Scan, SuperWeightRow
from db.schema import STATUS_FAILED, STATUS_OK, open_catalog

MODEL_FACTS = [c.name for c in Model.__table__.columns if c.name not in ("id", "source", "repo_id", "revision")]
SCAN_JSON = ("config", "timings", "environment", "summary")  # ScanResult keys kept as JSON on `scans`
CHILDREN = {"layers": LayerStatRow, "super_weights": SuperWeightRow, "ablations": AblationRow}


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


class Catalog:
    """The catalog at `url` (None: $SUPERWEIGHTS_DB, else $SUPERWEIGHTS_HOME/catalog.db).

    `read_only` (the read commands): the database is opened read-only, must exist and must be a
    catalog at the newest schema; nothing is created or migrated. Otherwise an embedded file is
    created and migrated when it is new or older; a server never is (`superweights db upgrade`).
    """

    def __init__(self, url: str | None = None, *, read_only: bool = False) -> None:
        self.location, self._engine = open_catalog(url, read_only=read_only)
        self.url: str = self.location.text
        self.display: str = self.location.display  # the URL with its password hidden, for messages

    # writes -------------------------------------------------------------------------------

    def save(self, result: ScanResult, *, started_at: datetime, finished_at: datetime) -> int:
        """Store a finished scan, replacing an earlier one of its key; returns the new scan id.
        A result holding NaN or inf is refused (`NonFiniteError`): SQL would store it as NULL."""
        info, data = result.model, result.to_dict()
        check_finite(data)
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
                started_at=_utc(started_at), finished_at=_utc(finished_at),
            )
            return _replace(session, scan)

    @contextmanager
    def _writing(self, source: str) -> Iterator[Session]:
        """One transaction: all of it is written, or (on any database error) none of it."""
        try:
            with Session(self._engine) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise CatalogWriteError(self.display, source, first_line(getattr(exc, "orig", None) or exc)) from exc

    # reads --------------------------------------------------------------------------------

    def has_scan(self, source: str, revision: str | None, config_hash: str, *, fingerprint: str | None = None,
                 include_failed: bool = False) -> bool:
        """Whether this config was scanned on (source, revision), or on these weights (`fingerprint`) under any name."""
        same = and_(Model.source == source, Model.revision.is_not_distinct_from(revision))
        query = select(Scan.id).join(Scan.model).where(
            or_(same, Model.fingerprint == fingerprint) if fingerprint else same, Scan.config_hash == config_hash,
        )
        if not include_failed:
            query = query.where(Scan.status == STATUS_OK)
        with Session(self._engine) as session:
            return bool(session.scalar(select(exists(query))))

    def known_as(self, info: ModelInfo) -> str | None:
        """How the catalog already knows the weights `info` describes, as a line for the user: under
        another name (the scan joins that model), or not, while their name holds other weights (a
        new revision of it). None: nothing to say."""
        with Session(self._engine) as session:
            same = _by_fingerprint(session, info.fingerprint)
            if same is not None and (same.source, same.revision) != (info.source, info.revision):
                return f"{info.source}: the same weights as {_named(same)} in the catalog (sha256 {info.fingerprint[:12]}); saved there"
            if same is None and info.fingerprint:
                others = session.scalars(select(Model).where(Model.source == info.source, Model.fingerprint.is_not(None),
                                                             Model.revision.is_distinct_from(info.revision))).all()
                if others:
                    return (f"{info.source}: the weights differ from those catalogued under this name ({_named(others[-1])}); "
                            f"saved as a new revision {info.revision}")
        return None

    def scans(self) -> list[StoredScan]:
        """Every scan, newest first."""
        return self._stored(select(Scan))

    def show(self, model: str) -> list[StoredScan]:
        """The scans of the models whose source or repo id is `model`, newest first."""
        ids = self._model_ids(model)
        return self._stored(select(Scan).where(Scan.model_id.in_(ids)))

    def latest(self, model: str) -> StoredScan:
        """The newest successful scan of the models `model` names (as `show`)."""
        scan = next((s for s in self.show(model) if s.result is not None), None)
        if scan is None:
            raise NoSuccessfulScanError(model, self.display)
        return scan

    def lineage(self, model: str) -> list[LineageMatch]:
        """Catalog models sharing `model`'s confirmed super-weight coordinates, most shared first."""
        ids = set(self._model_ids(model))
        keys, coordinates = self._confirmed_coordinates()
        mine = set().union(*(coordinates.get(i, set()) for i in ids))
        query = keys[min(ids)]
        others = {key: coordinates.get(i, set()) for i, key in keys.items() if i not in ids}
        return rank(query, mine, others)

    def _model_ids(self, model: str) -> list[int]:
        """The models `model` names: those whose source or repo id it is (a local path however typed:
        `./m` is the source scanned as `m`); else the one model (all its revisions) whose name without
        the organization is it; else the one whose source or repo id contains it. Case is ignored
        after the exact match; an empty `model` names none."""
        if not model.strip():
            raise UnknownModelError(model, self.display)
        exact = {model, canonical(model)}
        with Session(self._engine) as session:
            if ids := list(session.scalars(select(Model.id).where(or_(Model.source.in_(exact), Model.repo_id == model)))):
                return ids
            pattern = f"%{_escape_like(model.lower())}%"
            found = session.execute(
                select(Model.id, Model.repo_id, Model.source).where(
                    or_(func.lower(Model.source).like(pattern, escape="\\"), func.lower(Model.repo_id).like(pattern, escape="\\")))
            ).all()
        by_name: dict[str, list[int]] = {}
        for model_id, repo_id, source in found:
            by_name.setdefault(repo_id or source, []).append(model_id)
        named = [name for name in by_name if name.rsplit("/", 1)[-1].lower() == model.lower()]
        if len(named) == 1:
            return by_name[named[0]]
        if len(by_name) > 1:
            raise AmbiguousModelError(model, sorted(by_name))
        if not by_name:
            raise UnknownModelError(model, self.display)
        return next(iter(by_name.values()))

    def _confirmed_coordinates(self) -> tuple[dict[int, ModelKey], dict[int, set[Coordinate]]]:
        with Session(self._engine) as session:
            keys = {m.id: ModelKey(m.source, m.repo_id, m.revision, m.family, m.base_model) for m in session.scalars(select(Model))}
            rows = session.execute(
                select(Scan.model_id, SuperWeightRow.layer, SuperWeightRow.row, SuperWeightRow.col)
                .join(SuperWeightRow, SuperWeightRow.scan_id == Scan.id)
                .where(Scan.status == STATUS_OK, SuperWeightRow.verdict == CONFIRMED)
            )
            coordinates: dict[int, set[Coordinate]] = {}
            for model_id, layer, row, col in rows:
                coordinates.setdefault(model_id, set()).add((layer, row, col))
        return keys, coordinates

    def _stored(self, query: Any) -> list[StoredScan]:
        query = query.options(
            joinedload(Scan.model), *(selectinload(getattr(Scan, name)) for name in CHILDREN),
        ).order_by(Scan.finished_at.desc(), Scan.id.desc())
        with Session(self._engine) as session:
            return [_stored(scan) for scan in session.scalars(query).unique()]


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


def _named(model: Model) -> str:
    return f"{model.source}@{model.revision}" if model.revision else model.source


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
        model_id=model_id, status=STATUS_OK, started_at=_utc(started_at), finished_at=_utc(finished_at),
        dtype=result.model.dtype, device=result.environment.get("device"), config_hash=result.config_hash,
        **{k: data[k] for k in SCAN_JSON if k in data},
    )
    for name, row_type in CHILDREN.items():
        getattr(scan, name).extend(_row(row_type, item) for item in data[name])
    return scan


def _row(row_type: type[Base], item: dict[str, Any]) -> Base:
    columns = row_type.__table__.columns.keys()
    return row_type(**{k: v for k, v in item.items() if k in columns})


def _stored(scan: Scan) -> StoredScan:
    model = scan.model
    return StoredScan(
        scan.id, scan.status, scan.error, _utc(scan.started_at), _utc(scan.finished_at), scan.config_hash,
        model.source, model.repo_id, model.revision, _result(scan) if scan.status == STATUS_OK else None,
    )


def _result(scan: Scan) -> ScanResult:
    """Rebuild the scan's public dict from its rows; `from_dict` ignores what it does not know."""
    model = _columns(scan.model) | {"dtype": scan.dtype, "tags": scan.model.tags or []}
    data = {"schema": SCHEMA, "model": model, "config_hash": scan.config_hash, **{k: getattr(scan, k) or {} for k in SCAN_JSON}}
    for name in CHILDREN:
        data[name] = [_columns(row) for row in getattr(scan, name)]
    return ScanResult.from_dict(data)


def _columns(row: Base) -> dict[str, Any]:
    return {c: getattr(row, c) for c in row.__table__.columns.keys() if c not in ("id", "scan_id")}


def _utc(moment: datetime) -> datetime:
    """Store and return UTC; a naive time is taken as UTC (SQLite keeps no zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _escape_like(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
