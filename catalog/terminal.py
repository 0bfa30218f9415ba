"""Rich tables of a scan for the terminal."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from catalog.result import CONFIRMED, Ablation, Kind, ScanResult

PIPED_WIDTH = 1000  # columns of piped output: no table is cut or folded to fit a terminal that is not there


def stdout_console() -> Console:
    """Standard output: a terminal's own width; piped, as wide as the tables are ($COLUMNS overrides)."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)


def layers_table(result: ScanResult) -> Table:
    table = Table(title=escape(f"Down-projection activations: {result.model.source}"))
    for name in ("layer", "max |in|", "in ch", "max |out|", "out ch", "token", "spike"):
        table.add_column(name, justify="right")
    for row in result.layers:
        style = "bold red" if row.spike else None
        table.add_row(
            str(row.layer), _magnitude(row.in_max), str(row.in_channel), _magnitude(row.out_max),
            str(row.out_channel), str(row.token), "◀ spike" if row.spike else "", style=style,
        )
    return table


def _magnitude(value: float) -> str:
    """A max |activation|: one decimal from 1 up (23936.0), three significant digits below, where one
    decimal would print a quiet layer of a small model (0.00977) as 0.0."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def verdict_summary(result: ScanResult) -> str:
    """'6 candidates: 1 confirmed, 5 rejected' (verdicts that occur, in `VERDICTS` order)."""
    counts = ", ".join(f"{n} {verdict}" for verdict, n in result.verdict_counts().items() if n)
    return f"{len(result.super_weights)} candidates" + (f": {counts}" if counts else "")


def ratio(value: float | None) -> str:
    """A perplexity ratio: three decimals below 10, where a verdict turns on them (0.996, 1.003,
    3.906), four digits up to 1000 (11.07, 812.5), whole numbers beyond (12,345). The report uses it too."""
    if value is None:
        return ""
    if abs(value) < 10:
        return f"{value:.3f}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{ratio(low)}, {ratio(high)}]"


def super_weights_table(result: ScanResult) -> Table:
    """One row per candidate; the tensor index only where some candidate's differs from [row, col]
    (GPT-2's Conv1D, fused MoE experts), which keeps the verdict's columns within a piped line."""
    indexed = any(w.tensor_index != [w.row, w.col] for w in result.super_weights)
    table = Table(title=escape(f"Super weights ({verdict_summary(result)})"),
                  caption=None if result.super_weights else escape(_no_candidates(result.config)))
    names = ["layer", "param", "expert", "[row, col]", *(["tensor index"] if indexed else []),
             "value", "x[col]", "y[row]", "share", "iter", "verdict", "ppl ×", "95% interval"]
    for name in names:
        table.add_column(escape(name), justify="left" if name in ("param", "verdict") else "right")
    for w in result.super_weights:
        table.add_row(
            str(w.layer), escape(w.param), "" if w.expert is None else str(w.expert), escape(f"[{w.row}, {w.col}]"),
            *([escape(str(w.tensor_index))] if indexed else []), f"{w.value:.4g}", f"{w.input_activation:.4g}",
            f"{w.output_activation:.4g}", f"{w.share:.2f}", str(w.iteration), w.verdict, ratio(w.ppl_ratio),
            escape(interval(w.ppl_ratio_low, w.ppl_ratio_high)), style="bold green" if w.verdict == CONFIRMED else None,
        )
    return table


def _no_candidates(config: dict) -> str:
    """Why a scan has no candidates: no layer spiked under the rule it applied (every spike gives one)."""
    ratio, floor = config.get("spike_ratio"), config.get("spike_min_abs")
    rule = "the spike threshold" if ratio is None else f"{ratio:g} times the median layer's"
    rule += f" and at least {floor:g}" if floor else ""
    return f"No layer's max |out| reached {rule} (--spike-ratio, --spike-min): no candidates, nothing zeroed."


def ablations_table(result: ScanResult) -> Table:
    """Ratio and interval first: each row against the baseline on its own tokens, never the baseline row's."""
    table = Table(title="Ablations: perplexity ratio to the baseline on the same tokens, with its 95% interval",
                  caption="ppl: exp(mean next-token NLL, nats) on the row's tokens; baseline ppl: the baseline on those same tokens")
    total = next((a.windows for a in result.ablations if a.kind == Kind.BASELINE), None)
    for name in ("condition", "× baseline", "95% interval", "windows", "tokens", "ppl", "baseline ppl", "detail"):
        table.add_column(escape(name), justify="left" if name in ("condition", "detail") else "right")
    for a in result.ablations:
        table.add_row(escape(a.name), ratio(a.ratio), escape(interval(a.ratio_low, a.ratio_high)),
                      _windows(a, total), str(a.tokens), f"{a.ppl:.4g}", "" if a.baseline_ppl is None else f"{a.baseline_ppl:.4g}",
                      escape(a.detail))
    return table


def _windows(row: Ablation, total: int | None) -> str:
    if row.windows is None:
        return ""
    return f"{row.windows}/{total}" if total else str(row.windows)


def architectures_table(report) -> Table:
    """`superweights architectures`: one row per model type (`catalog.coverage.TypeCoverage`)."""
    scans = sum(1 for c in report if c.status == "scans")
    built = sum(1 for c in report if c.status != "does not build")
    table = Table(title=f"Causal-LM types: {scans} of {built} that build scan ({len(report)} types)")
    for name in ("type", "status", "layouts / reason", "sites per layer"):
        table.add_column(name)
    for c in report:
        what = ", ".join(c.layouts) if c.layouts else c.reason
        style = {"scans": "green", "not scanned": "bold red"}.get(c.status, "dim")
        table.add_row(escape(c.model_type), c.status, escape(what), " ".join(map(str, c.sites_per_layer)), style=style)
    return table
