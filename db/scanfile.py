"""Scan JSON files that stand in for the catalog: a finished scan the catalog could not take is kept
in one (`keep`), and `superweights db save` reads them back, checked whole before anything is saved."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from catalog import settings
from catalog.errors import NonFiniteError
from catalog.result import ScanResult
from db.errors import ScanFileError


def read_scan(path: Path) -> ScanResult:
    """The scan in `path`, or `ScanFileError` saying why it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScanFileError(path, f"cannot read it as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ScanFileError(path, "not a JSON object")
    try:
        result = ScanResult.from_dict(data, checked=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanFileError(path, str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}") from exc
    try:
        result.check_finite()
    except NonFiniteError as exc:
        raise ScanFileError(path, str(exc)) from exc
    return result


def scan_times(result: ScanResult, path: Path) -> dict[str, datetime]:
    """When the scan began and ended: as it recorded them, else (a file from before they were
    recorded) both the file's modification time."""
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return {"started_at": _moment(result.started_at, path) or written, "finished_at": _moment(result.finished_at, path) or written}


def _moment(text: str | None, path: Path) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ScanFileError(path, f"started_at/finished_at {text!r} is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def keep(result: ScanResult) -> Path:
    """A new scan JSON file holding `result`, under $SUPERWEIGHTS_HOME/unsaved/."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", result.model.source).strip("-")[-80:]
    path = settings.home() / "unsaved" / f"{stamp}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result.to_json(path)
    return path
