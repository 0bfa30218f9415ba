"""Charts as inline SVG, drawn at build time: no JavaScript, no chart library, nothing to fetch.

Both charts use a log scale: super activations are orders of magnitude above the other layers'
(Yu et al. 2024, fig. 2), and zeroing one super weight can multiply perplexity by thousands.
The ablation chart plots ratios, each condition against the baseline on its own tokens, never
perplexities: a row that stopped early covers other tokens than the baseline row, and its
perplexity set against the baseline row's would show effects that are not there.
The SVG is built with ElementTree, which escapes every text and attribute value it writes. It is
inlined in HTML, where no xmlns is needed (and so no URL appears in a page).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from catalog.result import Ablation, Kind, LayerStat
from catalog.terminal import ratio
from reports.formats import format_number, format_ratio

WIDTH = 1000
IN_COLOR = "#2563eb"
OUT_COLOR = "#ea580c"
SPIKE_COLOR = "#dc2626"
AXIS_COLOR = "#6b7280"
GRID_COLOR = "#e5e7eb"
MINOR_GRID_COLOR = "#f3f4f6"
# a row's point, by where its interval lies against its own verdict threshold
OUTCOME_COLORS = {"above": SPIKE_COLOR, "across": "#d97706", "below": IN_COLOR, "no threshold": "#374151"}
RATIO_RANGE = (1e-3, 1e6)  # interval ends beyond are cut at the axis (one segment gives an unbounded interval)


@dataclass(frozen=True)
class LogScale:
    """Maps positive values to pixels between `start` and `end`, whole decades at both ends."""

    lo: int  # exponent of the lowest decade
    hi: int  # exponent of the highest decade
    start: float
    end: float

    @classmethod
    def covering(cls, values: Sequence[float], start: float, end: float) -> LogScale:
        positive = [v for v in values if v > 0] or [1.0]
        lo = math.floor(math.log10(min(positive)))
        hi = max(math.ceil(math.log10(max(positive))), lo + 1)
        return cls(lo, hi, start, end)

    def __call__(self, value: float) -> float:
        exponent = math.log10(value) if value > 0 else self.lo
        return self.start + (exponent - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def decades(self) -> range:
        return range(self.lo, self.hi + 1)


def decade_label(exponent: int) -> str:
    """10**exponent the way a reader says it: 0.01, 1, 100, 10k, 1M, 1e9."""
    if -3 <= exponent < 0:
        return f"{10.0**exponent:g}"
    if 0 <= exponent <= 2:
        return str(10**exponent)
    if 3 <= exponent <= 8:
        return f"{10 ** (exponent % 3)}{'kM'[exponent // 3 - 1]}"
    return f"1e{exponent}"


def layer_chart(layers: Sequence[LayerStat], title: str) -> Markup:
    """Max |input| and max |output| of each layer's down projection, spike layers marked."""
    svg, (left, top, right, bottom) = _canvas(title, height=320, margins=(64, 58, 16, 48))
    y = LogScale.covering([v for s in layers for v in (s.in_max, s.out_max)], bottom, top)
    span = max(len(layers) - 1, 1)
    x = {s.layer: left + i / span * (right - left) for i, s in enumerate(layers)}
    _y_axis(svg, y, left, right, "max |activation| (log scale)")
    _x_axis(svg, x, bottom, "layer")
    for stat in (s for s in layers if s.spike):
        _dashed_line(svg, x[stat.layer], top, bottom, {"stroke-opacity": "0.6"})
    _series(svg, layers, x, y, "max |input|", IN_COLOR, lambda s: (s.in_max, s.in_channel), spikes=False)
    _series(svg, layers, x, y, "max |output|", OUT_COLOR, lambda s: (s.out_max, s.out_channel), spikes=True)
    _legend(svg, right, [("max |input|", IN_COLOR), ("max |output|", OUT_COLOR), ("spike layer", SPIKE_COLOR)])
    return _markup(svg)


@dataclass(frozen=True)
class Threshold:
    """A verdict threshold: a line across the chart, and the row kinds whose interval it judges."""

    value: float
    label: str
    kinds: frozenset[str]


def thresholds(confirm_ratio: float | None, control_max: float | None) -> list[Threshold]:
    """The scan's thresholds: --confirm-ratio judges single and all candidates zeroed, --control-max control A."""
    found = [(confirm_ratio, "confirm", {Kind.WEIGHT, Kind.ALL_WEIGHTS}), (control_max, "control A max", {Kind.RANDOM_CONTROL})]
    return [Threshold(value, f"{label} ×{value:g}", frozenset(kinds)) for value, label, kinds in found if value is not None]


def outcome(row: Ablation, threshold: Threshold | None) -> str:
    """Where the row's interval lies against its own threshold (the verdict's reading of it)."""
    if threshold is None or row.ratio_low is None or row.ratio_high is None:
        return "no threshold"
    if row.ratio_low > threshold.value:
        return "above"
    return "below" if row.ratio_high < threshold.value else "across"


def ablation_chart(ablations: Sequence[Ablation], confirm_ratio: float | None, control_max: float | None, title: str) -> Markup:
    """Each condition's perplexity ratio to the baseline on its own tokens, with its 95% interval.

    Log axis; a line at 1 (the baseline, which is not a row here) and one per verdict threshold;
    each point colored by where its interval lies against its own threshold.
    """
    rows = [a for a in ablations if a.kind != Kind.BASELINE and a.ratio is not None]
    lines = thresholds(confirm_ratio, control_max)
    total = next((a.windows for a in ablations if a.kind == Kind.BASELINE), None)
    row_height = 26
    svg, (left, top, right, bottom) = _canvas(title, height=96 + row_height * len(rows) + 48, margins=(230, 96, 250, 48))
    ends = [v for a in rows for v in (a.ratio, a.ratio_low, a.ratio_high) if v is not None and v > 0]
    x = LogScale.covering([min(max(v, RATIO_RANGE[0]), RATIO_RANGE[1]) for v in ends] + [1.0] + [t.value for t in lines], left, right)
    _x_log_axis(svg, x, top, bottom, "perplexity ratio to the baseline on the same tokens (log scale)")
    references = sorted([(1.0, "×1 = baseline", False)] + [(t.value, t.label, True) for t in lines])
    for i, (value, label, dashed) in enumerate(references):  # the rightmost line's label lowest: no line crosses a label
        _reference_line(svg, x(value), top, bottom, label, top - 8 - 14 * (len(references) - 1 - i), dashed)
    for i, row in enumerate(rows):
        threshold = next((t for t in lines if row.kind in t.kinds), None)
        _interval_row(svg, row, threshold, total, x, (left, right), top + i * row_height + row_height / 2)
    _legend(svg, right + 240, [(f"interval {name} its threshold" if name != "no threshold" else name, color)
                               for name, color in OUTCOME_COLORS.items()], width=205, y=34)
    return _markup(svg)


def _canvas(title: str, height: int, margins: tuple[int, int, int, int]) -> tuple[ET.Element, tuple[float, ...]]:
    """An <svg> with its title drawn and announced; returns it and the plot box (l, t, r, b)."""
    svg = ET.Element("svg", {
        "viewBox": f"0 0 {WIDTH} {height}",
        "width": str(WIDTH), "height": str(height), "role": "img", "aria-label": title,
        "class": "chart",
    })
    _el(svg, "title", title)
    _el(svg, "text", title, x="12", y="22", fill="#111827", **{"font-size": "15", "font-weight": "600"})
    left, top, right, bottom = margins
    return svg, (left, top, WIDTH - right, height - bottom)


def _y_axis(svg: ET.Element, y: LogScale, left: float, right: float, label: str) -> None:
    for exponent in y.decades():
        py = f"{y(10.0**exponent):.1f}"
        _el(svg, "line", x1=str(left), x2=str(right), y1=py, y2=py, stroke=GRID_COLOR)
        _el(svg, "text", decade_label(exponent), x=str(left - 8), y=py, fill=AXIS_COLOR,
            **{"text-anchor": "end", "dominant-baseline": "middle"})
    mid = (y.start + y.end) / 2
    _el(svg, "text", label, x="14", y=f"{mid:.1f}", fill="#374151", transform=f"rotate(-90 14 {mid:.1f})",
        **{"text-anchor": "middle"})


def _x_axis(svg: ET.Element, x: dict[int, float], bottom: float, label: str) -> None:
    layers = sorted(x)
    step = max(1, math.ceil(len(layers) / 16))
    _el(svg, "line", x1=f"{x[layers[0]]:.1f}" if layers else "0", x2=f"{x[layers[-1]]:.1f}" if layers else "0",
        y1=str(bottom), y2=str(bottom), stroke=AXIS_COLOR)
    for layer in layers[::step]:
        _el(svg, "text", str(layer), x=f"{x[layer]:.1f}", y=str(bottom + 18), fill=AXIS_COLOR, **{"text-anchor": "middle"})
    centre = (x[layers[0]] + x[layers[-1]]) / 2 if layers else WIDTH / 2
    _el(svg, "text", label, x=f"{centre:.1f}", y=str(bottom + 38), fill="#374151", **{"text-anchor": "middle"})


def _x_log_axis(svg: ET.Element, x: LogScale, top: float, bottom: float, label: str) -> None:
    """Decades, and 2 and 5 of each between them (labelled too when the axis spans at most 4 decades)."""
    for exponent in x.decades():
        for multiple in (2, 5) if exponent < x.hi else ():
            px = f"{x(multiple * 10.0**exponent):.1f}"
            _el(svg, "line", x1=px, x2=px, y1=str(top), y2=str(bottom), stroke=MINOR_GRID_COLOR)
            if x.hi - x.lo <= 4:
                _el(svg, "text", f"{multiple * 10.0**exponent:g}", x=px, y=str(bottom + 18), fill=AXIS_COLOR,
                    **{"text-anchor": "middle", "font-size": "10"})
        px = f"{x(10.0**exponent):.1f}"
        _el(svg, "line", x1=px, x2=px, y1=str(top), y2=str(bottom), stroke=GRID_COLOR)
        _el(svg, "text", decade_label(exponent), x=px, y=str(bottom + 18), fill=AXIS_COLOR, **{"text-anchor": "middle"})
    _el(svg, "text", label, x=f"{(x.start + x.end) / 2:.1f}", y=str(bottom + 38), fill="#374151", **{"text-anchor": "middle"})


def _series(svg: ET.Element, layers: Sequence[LayerStat], x: dict[int, float], y: LogScale, name: str,
            color: str, pick: Callable[[LayerStat], tuple[float, int]], spikes: bool) -> None:
    """One line with a point per layer (spike layers' in red when `spikes`); tooltips give value and channel."""
    points = [(x[s.layer], y(pick(s)[0])) for s in layers]
    _el(svg, "polyline", points=" ".join(f"{px:.1f},{py:.1f}" for px, py in points), fill="none",
        stroke=color, **{"stroke-width": "2"})
    for stat, (px, py) in zip(layers, points):
        value, channel = pick(stat)
        spike = spikes and stat.spike
        dot = _el(svg, "circle", cx=f"{px:.1f}", cy=f"{py:.1f}", r="4.5" if spike else "3",
                  fill=SPIKE_COLOR if spike else color)
        _el(dot, "title", f"layer {stat.layer}: {name} {format_number(value)} (channel {channel})")


def _dashed_line(svg: ET.Element, px: float, top: float, bottom: float, style: dict[str, str]) -> None:
    """A vertical red dashed line across the plot (a spike layer, the baseline); `style` adds its own strokes."""
    _el(svg, "line", x1=f"{px:.1f}", x2=f"{px:.1f}", y1=str(top), y2=str(bottom), stroke=SPIKE_COLOR,
        **{"stroke-dasharray": "4 3", **style})


def _legend(svg: ET.Element, right: float, entries: list[tuple[str, str]], width: int = 110, y: int = 34) -> None:
    px = right - width * len(entries)
    for name, color in entries:
        _el(svg, "rect", x=f"{px:.0f}", y=str(y), width="12", height="12", rx="2", fill=color)
        _el(svg, "text", name, x=f"{px + 17:.0f}", y=str(y + 10), fill="#374151")
        px += width


def _reference_line(svg: ET.Element, px: float, top: float, bottom: float, label: str, label_y: float, dashed: bool) -> None:
    """A vertical line across the plot (×1, a threshold), labelled above it at its own height."""
    style = {"stroke-dasharray": "5 3"} if dashed else {}
    color = SPIKE_COLOR if dashed else "#111827"
    _el(svg, "line", x1=f"{px:.1f}", x2=f"{px:.1f}", y1=f"{label_y + 4:.1f}", y2=str(bottom), stroke=color,
        **{"stroke-width": "1.5", "class": "reference", **style})
    _el(svg, "text", label, x=f"{px + 4:.1f}", y=f"{label_y:.1f}", fill=color, **{"font-size": "11"})


def _interval_row(svg: ET.Element, row: Ablation, threshold: Threshold | None, total: int | None, x: LogScale,
                  span: tuple[float, float], middle: float) -> None:
    """One condition: its name left of the axis, its interval as a whisker, its ratio as a point, the numbers at the right."""
    left, right = span
    y = f"{middle:.1f}"
    name = row.name if len(row.name) <= 32 else row.name[:31] + "…"
    label = _el(svg, "text", name, x=str(left - 8), y=y, fill="#111827", **{"text-anchor": "end", "dominant-baseline": "middle"})
    _el(label, "title", row.name)
    color = OUTCOME_COLORS[outcome(row, threshold)]
    mark = _el(svg, "g", **{"class": "condition"})
    _el(mark, "title", _row_tooltip(row, total))
    if row.ratio_low is not None and row.ratio_high is not None:
        low, high = (min(max(x(v), left), right) for v in (row.ratio_low, row.ratio_high))
        _el(mark, "line", x1=f"{low:.1f}", x2=f"{high:.1f}", y1=y, y2=y, stroke=color, **{"stroke-width": "2", "class": "interval"})
        for end in (low, high):
            _el(mark, "line", x1=f"{end:.1f}", x2=f"{end:.1f}", y1=f"{middle - 5:.1f}", y2=f"{middle + 5:.1f}", stroke=color,
                **{"stroke-width": "2"})
    _el(mark, "circle", cx=f"{x(row.ratio):.1f}", cy=y, r="4.5", fill=color, **{"class": "ratio"})
    _el(svg, "text", _row_numbers(row, total), x=f"{right + 8:.1f}", y=y, fill="#374151", **{"dominant-baseline": "middle"})


def _row_numbers(row: Ablation, total: int | None) -> str:
    """'×3.91 [3.07, 4.97] · 2/8 windows'."""
    text = format_ratio(row.ratio)
    if row.ratio_low is not None and row.ratio_high is not None:
        text += f" [{ratio(row.ratio_low)}, {ratio(row.ratio_high)}]"
    if row.windows is not None:
        text += f" · {row.windows}/{total} windows" if total else f" · {row.windows} windows"
    return text


def _row_tooltip(row: Ablation, total: int | None) -> str:
    baseline = "" if row.baseline_ppl is None else f" against the baseline's {format_number(row.baseline_ppl)} on the same tokens"
    return (f"{row.name}: ratio {_row_numbers(row, total)}, {row.tokens} tokens; "
            f"perplexity {format_number(row.ppl)}{baseline}")


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _markup(svg: ET.Element) -> Markup:
    """The SVG as markup safe to inline: ElementTree has escaped every value in it."""
    return Markup(ET.tostring(svg, encoding="unicode", short_empty_elements=False))
