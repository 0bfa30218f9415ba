"""The catalog's rows as files: per model, the scan JSON, a CSV of each of its tables and the keep
lists of its confirmed super weights for quantizers (`catalog.keeplist`) next to its page; for
the whole catalog (the latest scan of each model), a CSV and a Parquet file of its models, super
weight candidates and ablation rows in `downloads/`.

The JSON escapes <, > and & (still valid JSON) so a hostile model name is inert even when the
file is opened in a browser; CSV cells hold the raw values, since that is what a CSV is for (list
values as JSON). Parquet columns are typed from the result dataclasses; the rows reach DuckDB as
newline-delimited JSON, which keeps null and the empty string apart.
"""

from __future__ import annotations

import csv
import io
import json
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import duckdb

from catalog.errors import KeepListError
from catalog.keeplist import keep_list
from catalog.result import Ablation, LayerStat, ModelInfo, ScanResult, SuperWeight
from reports.search import script_json
from reports.site import ModelEntry, Site

# Key columns of every whole-catalog row: which model and scan it is of (no local paths: `model` is the display name).
KEY_COLUMNS = {"model": "VARCHAR", "repo_id": "VARCHAR", "revision": "VARCHAR", "family": "VARCHAR", "scan_id": "BIGINT"}
SQL_TYPES = {int: "BIGINT", float: "DOUBLE", str: "VARCHAR", bool: "BOOLEAN", list: "VARCHAR"}
CATALOG_TABLES = {"models": "Models", "super-weights": "Super weight candidates", "ablations": "Ablations"}
CATALOG_DOWNLOADS = {f"catalog-{table}.{ext}": f"{label} {ext.upper() if ext == 'csv' else 'Parquet'}"
                     for table, label in CATALOG_TABLES.items() for ext in ("csv", "parquet")}  # file name -> link label

DOWNLOADS = {  # file suffix -> link label on the model page
    ".json": "Scan JSON",
    ".super-weights.csv": "Super weights CSV",
    ".layers.csv": "Layers CSV",
    ".ablations.csv": "Ablations CSV",
}
KEEP_LISTS = {  # file suffix -> (keep-list format, link label): what a quantizer keeps (README "Keep lists for quantizers")
    ".keep-llama.cpp.txt": ("llama.cpp", "llama.cpp: llama-quantize --tensor-type arguments"),
    ".keep-bitsandbytes.json": ("bitsandbytes", "bitsandbytes: llm_int8_skip_modules"),
    ".keep-llm-compressor.json": ("llm-compressor", "llm-compressor: ignore list"),
    ".restore.json": ("restore", "Restore file (superweights apply-restore)"),
}


def write_downloads(model: ModelEntry, directory: Path) -> None:
    """Write `<slug>.json` and `<slug>.{super-weights,layers,ablations}.csv`."""
    result, scan = model.result, model.latest
    document = {
        "scan": {"scan_id": scan.scan_id, "started_at": scan.started_at.isoformat(),
                 "finished_at": scan.finished_at.isoformat(), "config_hash": scan.config_hash},
        **result.to_dict(),
    }
    files = {
        ".json": script_json(document, indent=2) + "\n",
        ".super-weights.csv": to_csv(SuperWeight, [asdict(w) for w in result.super_weights]),
        ".layers.csv": to_csv(LayerStat, [asdict(s) for s in result.layers]),
        ".ablations.csv": to_csv(Ablation, [asdict(a) for a in result.ablations]),
    }
    for suffix, text in (files | keep_lists(result)).items():
        (directory / f"{model.slug}{suffix}").write_text(text, encoding="utf-8")


def keep_lists(result: ScanResult) -> dict[str, str]:
    """File suffix -> text of each keep list of the scan's confirmed super weights (`KEEP_LISTS`);
    a list the scan cannot give (no tensor shapes recorded, a name llama.cpp lacks) is left out.
    JSON is escaped as the scan JSON is."""
    files = {}
    for suffix, (fmt, _) in KEEP_LISTS.items():
        try:
            text = keep_list(result, fmt).text
        except KeepListError:
            continue
        files[suffix] = script_json(json.loads(text), indent=2) + "\n" if suffix.endswith(".json") else text
    return files


def to_csv(row_type: type, rows: list[dict]) -> str:
    """CSV with a header of the row type's fields (so an empty table still names its columns)."""
    return csv_text([f.name for f in fields(row_type)], rows)


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def write_catalog_downloads(site: Site, directory: Path) -> None:
    """`catalog-<table>.csv` and `.parquet` for each of `CATALOG_TABLES`, from each model's latest scan."""
    directory.mkdir()
    with duckdb.connect() as con:  # one for the three files: each connection costs 20-60 ms
        for table, (columns, rows) in catalog_tables(site).items():
            (directory / f"catalog-{table}.csv").write_text(csv_text(list(columns), rows), encoding="utf-8")
            write_parquet(con, columns, rows, directory / f"catalog-{table}.parquet")


def catalog_tables(site: Site) -> dict[str, tuple[dict[str, str], list[dict[str, Any]]]]:
    """Table name -> (column -> DuckDB type, rows)."""
    model_columns = {"finished_at": "TIMESTAMPTZ"} | sql_columns(ModelInfo, skip={"source", "repo_id", "revision"}) | {
        v: "BIGINT" for v in ("confirmed", "rejected", "inconclusive", "untested")}
    return {
        "models": (KEY_COLUMNS | model_columns, [_key(m) | _model_facts(m) for m in site.models]),
        "super-weights": (KEY_COLUMNS | sql_columns(SuperWeight),
                          [_key(m) | asdict(w) for m in site.models for w in m.result.super_weights]),
        "ablations": (KEY_COLUMNS | sql_columns(Ablation), [_key(m) | asdict(a) for m in site.models for a in m.result.ablations]),
    }


def sql_columns(row_type: type, skip: set[str] = frozenset()) -> dict[str, str]:
    """The dataclass's fields as DuckDB columns: `int | None` is BIGINT, a list is JSON text."""
    hints = typing.get_type_hints(row_type)
    return {f.name: SQL_TYPES[_base(hints[f.name])] for f in fields(row_type) if f.name not in skip}


def _base(hint: Any) -> type:
    """int of `int | None`, list of `list[int]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _key(model: ModelEntry) -> dict[str, Any]:
    m = model.result.model
    return {"model": model.name, "repo_id": m.repo_id, "revision": m.revision, "family": m.family, "scan_id": model.latest.scan_id}


def _model_facts(model: ModelEntry) -> dict[str, Any]:
    facts = {k: v for k, v in asdict(model.result.model).items() if k not in KEY_COLUMNS and k != "source"}
    return {"finished_at": model.latest.finished_at.isoformat()} | facts | model.result.verdict_counts()


def write_parquet(con: duckdb.DuckDBPyConnection, columns: dict[str, str], rows: list[dict[str, Any]], path: Path) -> None:
    """Typed Parquet of `rows` through DuckDB (its input, NDJSON beside the target, is removed after)."""
    source = path.with_suffix(".ndjson")
    source.write_text("".join(json.dumps({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}) + "\n" for row in rows))
    try:
        con.read_json(str(source), format="newline_delimited", columns=columns).write_parquet(str(path))
    finally:
        source.unlink()
