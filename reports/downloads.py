"""A model's rows as files next to its page: the scan JSON and a CSV of each of its tables.

The JSON escapes <, > and & (still valid JSON) so a hostile model name is inert even when the
file is opened in a browser; CSV cells hold the raw values, since that is what a CSV is for.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, fields
from pathlib import Path

from catalog.result import Ablation, LayerStat, SuperWeight
from reports.search import script_json
from reports.site import ModelEntry

DOWNLOADS = {  # file suffix -> link label on the model page
    ".json": "Scan JSON",
    ".super-weights.csv": "Super weights CSV",
    ".layers.csv": "Layers CSV",
    ".ablations.csv": "Ablations CSV",
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
    for suffix, text in files.items():
        (directory / f"{model.slug}{suffix}").write_text(text, encoding="utf-8")


def to_csv(row_type: type, rows: list[dict]) -> str:
    """CSV with a header of the row type's fields (so an empty table still names its columns)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(row_type)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
