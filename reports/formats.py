"""How numbers read on the pages and in the charts: the same everywhere (ratios as in the terminal)."""

from __future__ import annotations

from catalog.terminal import ratio


def format_number(value: float | None) -> str:
    """Four significant digits, whole numbers from 10,000 on: 5.876, 2996, 24,022, 1.2e-05."""
    if value is None:
        return ""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    if abs(value) < 1e9:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    """A perplexity ratio: ×1.004, ×812.5, ×12,345."""
    return "" if value is None else f"×{ratio(value)}"  # the terminal tables' digits
