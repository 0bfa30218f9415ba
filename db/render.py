"""How the catalog's commands print: query results as a table, CSV or JSON; `show` and `lineage`."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from catalog.identity import name_fact
from catalog.result import VERDICTS, ScanResult
from catalog.terminal import ablations_table, super_weights_table
from db.lineage import LineageMatch
from db.schema import STATUS_OK

if TYPE_CHECKING:
    from db.query import QueryResult
    from db.reads import StoredScan


def query_table(result: QueryResult) -> Table:
    table = Table(show_lines=False)
    for name in result.columns:
        table.add_column(name, overflow="fold")
    for row in result.rows:
        table.add_row(*(Text("NULL", style="dim") if v is None else Text(_text(v)) for v in row))
    table.caption = f"{'first ' * result.cut}{len(result.rows)} row{'s' * (len(result.rows) != 1)}"
    return table


def query_csv(result: QueryResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([["" if v is None else _text(v) for v in row] for row in result.rows])
    return buffer.getvalue()


def query_json(result: QueryResult) -> str:
    """A JSON array of objects, one per row: the form notebooks and `jq` want."""
    records = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    return json.dumps(records, indent=2, default=_json_value) + "\n"


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, (datetime, date)) else str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def show(scans: list[StoredScan]) -> RenderableType:
    """A model's catalog entry: its facts, its scans, and the newest successful scan's findings."""
    latest = next((s.result for s in scans if s.result is not None), None)
    parts: list[RenderableType] = [_facts(scans[0], latest), _scans_table(scans)]
    if latest is not None:
        parts.append(super_weights_table(latest))
        if latest.ablations:
            parts.append(ablations_table(latest))
    return Group(*parts)


def _facts(first: StoredScan, latest: ScanResult | None) -> Table:
    """The newest scan names the model; the newest successful one (if any) gives its facts."""
    table = Table(title=f"{first.source} @ {first.revision or '(no revision)'}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("repo id", first.repo_id or "")
    if latest is None:
        table.add_row("facts", "none: every scan of this model failed")
        return table
    info = latest.model
    size = f"{info.num_layers} layers, hidden {info.hidden_size}, intermediate {info.intermediate_size}, {info.num_parameters:,} parameters"
    for name, value in [
        ("name", name_fact(info.name, info.named_from)), ("organization", info.organization),
        ("size label", info.size_label), ("family", info.family), ("architecture", f"{info.architecture} ({info.model_type})"), ("size",
            size),
        ("format", f"{info.format} {info.quantization or ''}".strip()), ("dtype", info.dtype),
        ("license", info.license), ("base model", info.base_model), ("tags", ", ".join(info.tags)),
        ("downloads", None if info.downloads is None else f"{info.downloads:,}"),
        ("fingerprint", info.fingerprint and f"sha256 {info.fingerprint}"),
    ]:
        table.add_row(name, value or "")
    return table


def _scans_table(scans: list[StoredScan]) -> Table:
    """One row per scan, with its candidates counted by verdict (a failed scan has none)."""
    table = Table(title="Scans (newest first)")
    for name in ("scan", "status", "config", "finished (UTC)", "device", *VERDICTS, "error"):
        table.add_column(name, overflow="fold")
    for s in scans:
        counts = s.result.verdict_counts() if s.result else dict.fromkeys(VERDICTS, 0)
        table.add_row(
            str(s.scan_id), s.status, s.config_hash, s.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
            (s.result.environment.get("device", "") if s.result else ""), *map(str, counts.values()),
            s.error or "", style="red" if s.status != STATUS_OK else None,
        )
    return table


def lineage(model: str, matches: list[LineageMatch]) -> Table:
    table = Table(title=f"Models sharing confirmed super-weight coordinates with {model}")
    for name in ("model", "revision", "family", "shared", "jaccard", "coordinates (layer, row, col)", "declared"):
        table.add_column(name, overflow="fold")
    for m in matches:
        coords = ", ".join(f"({layer}, {row}, {col})" for layer, row, col in m.shared)
        table.add_row(m.model.source, (m.model.revision or "")[:12], m.model.family or "", str(m.overlap), f"{m.jaccard:.2f}", coords,
                      m.declared or "")
    return table
