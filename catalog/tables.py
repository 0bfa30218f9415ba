"""Rich tables of a scan for the terminal."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from catalog.result import ScanResult


def layers_table(result: ScanResult) -> Table:
    table = Table(title=escape(f"Down-projection activations: {result.model.source}"))
    for name in ("layer", "max |in|", "in ch", "max |out|", "out ch", "token", "spike"):
        table.add_column(name, justify="right")
    for row in result.layers:
        style = "bold red" if row.spike else None
        table.add_row(
            str(row.layer), f"{row.in_max:.1f}", str(row.in_channel), f"{row.out_max:.1f}",
            str(row.out_channel), str(row.token), "◀ spike" if row.spike else "", style=style,
        )
    return table


def super_weights_table(result: ScanResult) -> Table:
    table = Table(title=f"Super weights ({len(result.super_weights)} found, {len(result.confirmed)} confirmed)")
    for name in ("layer", "param", "expert", "[row, col]", "tensor index", "value", "x[col]", "y[row]", "share", "iter", "verdict", "ppl ×"):
        table.add_column(escape(name), justify="left" if name in ("param", "verdict") else "right")
    for w in result.super_weights:
        table.add_row(
            str(w.layer), escape(w.param), "" if w.expert is None else str(w.expert), escape(f"[{w.row}, {w.col}]"),
            escape(str(w.tensor_index)), f"{w.value:.4g}", f"{w.input_activation:.4g}", f"{w.output_activation:.4g}",
            f"{w.share:.2f}", str(w.iteration), w.verdict, "" if w.ppl_ratio is None else f"{w.ppl_ratio:.3g}",
            style="bold green" if w.verdict == "confirmed" else None,
        )
    return table


def ablations_table(result: ScanResult) -> Table:
    table = Table(title="Ablations: perplexity on the evaluation text")
    for name in ("condition", "ppl", "× baseline", "tokens", "detail"):
        table.add_column(name, justify="left" if name in ("condition", "detail") else "right")
    for a in result.ablations:
        table.add_row(escape(a.name), f"{a.ppl:.4g}", "" if a.ratio is None else f"{a.ratio:.3g}", str(a.tokens), escape(a.detail))
    return table


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
