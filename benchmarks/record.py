"""Where a benchmark's figures go: one JSON file under `benchmarks/results/`, named by the UTC time
of writing and what was measured, so runs never overwrite each other and sort by date."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path


def write_results(record: object, results: Path, name: str) -> Path:
    """`record` as `<results>/<YYYYmmddTHHMMSS>-<name>.json`; says where."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{name}.json"
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return out
