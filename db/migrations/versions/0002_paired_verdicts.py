"""Paired ablation rows and verdicts that say what happened (scan JSON schema 2).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

New columns: `ablations.kind`, `baseline_ppl`, `ratio_low`, `ratio_high`, `windows`, and
`super_weights.ppl_ratio_low`, `ppl_ratio_high`. Rows written at 0001 are filled from what their
scan stored. The rules are copied here rather than imported: a migration must keep doing what it
did when it was written, whatever the package's code becomes.

- `kind` from the row's name, its only record at 0001 ("baseline", "zero L11 [507, 1229]", "zero
  all candidates", "control A: random", "control B: outliers", "+SA: ...", "int8 RTN ..."); a
  name none of these match stays NULL.
- `baseline_ppl` = ppl / ratio: the stored ratio was already paired, exactly the row's perplexity
  over the baseline's on the same tokens.
- `ratio_low`, `ratio_high`, `windows` from the scan's `summary.intervals[name]` where the scan
  recorded one; the baseline row is [1, 1] over every window (config `eval_token_count` //
  `seq_len`). Otherwise NULL.
- `verdict`, by the rule scans apply from schema 2 on, with the scan's own `confirm_ratio` and
  `control_max`:
  - a scan without ablation rows (`--no-verify`): `candidate` -> `untested`;
  - a weight whose row has an interval: `rejected` when the interval lies below confirm_ratio,
    `confirmed` when it lies above and control A's interval lies below control_max, else
    `inconclusive` (so a 0001 `confirmed` whose interval straddles the threshold becomes
    `inconclusive`, and a `candidate` that was refuted becomes `rejected`);
  - a weight of a verified scan whose row has no interval (scans from before intervals were
    recorded): `confirmed` stays (it passed the point test then in force), `candidate` ->
    `inconclusive` (tested, but nothing stored says on which side of the threshold it lies).

Downgrade: `rejected`, `inconclusive` and `untested` become `candidate` again; the columns go.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ABLATION_COLUMNS = {"kind": sa.String(length=32), "baseline_ppl": sa.Double(), "ratio_low": sa.Double(),
                    "ratio_high": sa.Double(), "windows": sa.Integer()}
WEIGHT_COLUMNS = {"ppl_ratio_low": sa.Double(), "ppl_ratio_high": sa.Double()}
KIND_NAMES = {"baseline": "baseline", "zero all candidates": "all_weights", "control A: random": "random_control",
              "control B: outliers": "outlier_control"}
KIND_PREFIXES = (("zero L", "weight"), ("+SA", "restore_sa"), ("int", "quantization"))
CONTROL_A = "control A: random"

scans = sa.table("scans", sa.column("id", sa.Integer), sa.column("config", sa.JSON), sa.column("summary", sa.JSON))
ablations = sa.table("ablations", *(sa.column(c) for c in ("id", "scan_id", "name", "ppl", "ratio", *ABLATION_COLUMNS)))
weights = sa.table("super_weights", *(sa.column(c) for c in ("id", "scan_id", "layer", "expert", "row", "col", "verdict", *WEIGHT_COLUMNS)))


def upgrade() -> None:
    for table, columns in (("ablations", ABLATION_COLUMNS), ("super_weights", WEIGHT_COLUMNS)):
        with op.batch_alter_table(table) as batch:
            for name, type_ in columns.items():
                batch.add_column(sa.Column(name, type_, nullable=True))
    connection = op.get_bind()
    for scan_id, config, summary in connection.execute(sa.select(scans.c.id, scans.c.config, scans.c.summary)).all():
        _migrate_scan(connection, scan_id, config or {}, summary or {})


def downgrade() -> None:
    op.execute(weights.update().where(weights.c.verdict.in_(("rejected", "inconclusive", "untested"))).values(verdict="candidate"))
    for table, columns in (("super_weights", WEIGHT_COLUMNS), ("ablations", ABLATION_COLUMNS)):
        with op.batch_alter_table(table) as batch:
            for name in columns:
                batch.drop_column(name)


def _migrate_scan(connection: sa.Connection, scan_id: int, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """Fill one scan's ablation rows, then its weights' intervals and verdicts from them."""
    intervals = summary.get("intervals") or {}
    stored = connection.execute(sa.select(ablations.c.id, ablations.c.name, ablations.c.ppl, ablations.c.ratio)
                                .where(ablations.c.scan_id == scan_id)).all()
    rows = {row.name: {"id": row.id, **_paired(row, intervals.get(row.name), config)} for row in stored}
    _update(connection, ablations, list(rows.values()))
    found = connection.execute(sa.select(weights).where(weights.c.scan_id == scan_id)).all()
    _update(connection, weights, [_judged(w, rows, config) for w in found])


def _paired(row: sa.Row, interval: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    kind = KIND_NAMES.get(row.name) or next((k for prefix, k in KIND_PREFIXES if row.name.startswith(prefix)), None)
    low = high = windows = None
    if kind == "baseline":
        low = high = 1.0
        windows = config["eval_token_count"] // config["seq_len"] if {"eval_token_count", "seq_len"} <= config.keys() else None
    elif interval:
        low, high, windows = interval.get("ratio_low"), interval.get("ratio_high"), interval.get("windows")
    baseline_ppl = row.ppl / row.ratio if row.ratio else None
    return {"kind": kind, "baseline_ppl": baseline_ppl, "ratio_low": low, "ratio_high": high, "windows": windows}


def _judged(weight: sa.Row, rows: dict[str, dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    row = rows.get(_label(weight), {})
    low, high = row.get("ratio_low"), row.get("ratio_high")
    return {"id": weight.id, "ppl_ratio_low": low, "ppl_ratio_high": high, "verdict": _verdict(weight.verdict, low, high, rows, config)}


def _verdict(old: str, low: float | None, high: float | None, rows: dict[str, dict[str, Any]], config: dict[str, Any]) -> str:
    if not rows:
        return "untested"
    if low is None or high is None:
        return "confirmed" if old == "confirmed" else "inconclusive"
    confirm = config.get("confirm_ratio", 2.0)
    control_high = rows.get(CONTROL_A, {}).get("ratio_high")
    if high < confirm:
        return "rejected"
    if low > confirm and control_high is not None and control_high < config.get("control_max", 1.1):
        return "confirmed"
    return "inconclusive"


def _label(weight: sa.Row) -> str:
    """The 0001 name of a weight's own ablation row."""
    expert = f" expert {weight.expert}" if weight.expert is not None else ""
    return f"zero L{weight.layer}{expert} [{weight.row}, {weight.col}]"


def _update(connection: sa.Connection, table: sa.TableClause, values: list[dict[str, Any]]) -> None:
    """One executemany UPDATE by id; bind names are prefixed, as they may not repeat column names."""
    if not values:
        return
    columns = [name for name in values[0] if name != "id"]
    statement = table.update().where(table.c.id == sa.bindparam("b_id")).values({c: sa.bindparam(f"b_{c}") for c in columns})
    connection.execute(statement, [{f"b_{k}": v for k, v in item.items()} for item in values])
