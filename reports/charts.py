"""Charts as inline SVG, drawn at build time: no JavaScript, no chart library, nothing to fetch.

Both charts use a log scale: super activations are orders of magnitude above the other layers'
(Yu et al. 2024, fig. 2), and zeroing one super weight can multiply perplexity by thousands.
The SVG is built with ElementTree, which escapes every text and attribute value it writes. It is
inlined in HTML, where no xmlns is needed (and so no URL appears in a page).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from catalog.result import Ablation, LayerStat
from reports.formats import format_number, format_ratio

WIDTH = 1000
IN_COLOR = "#2563eb"
OUT_COLOR = "#ea580c"
SPIKE_COLOR = "#dc2626"
AXIS_COLOR = "#6b7280"
GRID_COLOR = "#e5e7eb"


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


def ablation_chart(ablations: Sequence[Ablation], title: str) -> Markup:
    """Perplexity under each ablation condition as horizontal bars, baseline drawn as a line."""
    row_height = 24
    height = 58 + row_height * len(ablations) + 48
    svg, (left, top, right, bottom) = _canvas(title, height=height, margins=(210, 48, 130, 48))
    x = LogScale.covering([a.ppl for a in ablations], left, right)
    _x_log_axis(svg, x, top, bottom, "perplexity (log scale)")
    for i, ablation in enumerate(ablations):
        _bar(svg, ablation, x, left, top + i * row_height + 4, row_height - 8)
    baseline = next((a for a in ablations if a.name == "baseline"), None)
    if baseline is not None:
        _dashed_line(svg, x(baseline.ppl), top, bottom, {"stroke-width": "1"})
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
    for exponent in x.decades():
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


def _legend(svg: ET.Element, right: float, entries: list[tuple[str, str]]) -> None:
    px = right - 110 * len(entries)
    for name, color in entries:
        _el(svg, "rect", x=f"{px:.0f}", y="34", width="12", height="12", rx="2", fill=color)
        _el(svg, "text", name, x=f"{px + 17:.0f}", y="44", fill="#374151")
        px += 110


def _bar(svg: ET.Element, ablation: Ablation, x: LogScale, left: float, top: float, height: float) -> None:
    """One condition: its name left of the axis, the bar, its perplexity (and ratio) at the end."""
    middle = f"{top + height / 2:.1f}"
    name = ablation.name if len(ablation.name) <= 30 else ablation.name[:29] + "…"
    label = _el(svg, "text", name, x=str(left - 8), y=middle, fill="#111827",
                **{"text-anchor": "end", "dominant-baseline": "middle"})
    _el(label, "title", ablation.name)
    end = x(ablation.ppl)
    color = AXIS_COLOR if ablation.name == "baseline" else OUT_COLOR
    bar = _el(svg, "rect", x=str(left), y=f"{top:.1f}", width=f"{max(end - left, 1):.1f}", height=f"{height:.1f}",
              fill=color, rx="2")
    _el(bar, "title", f"{ablation.name}: perplexity {format_number(ablation.ppl)}")
    ratio = "" if ablation.ratio is None else f"  {format_ratio(ablation.ratio)}"
    _el(svg, "text", f"{format_number(ablation.ppl)}{ratio}", x=f"{end + 6:.1f}", y=middle, fill="#374151",
        **{"dominant-baseline": "middle"})


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _markup(svg: ET.Element) -> Markup:
    """The SVG as markup safe to inline: ElementTree has escaped every value in it."""
    return Markup(ET.tostring(svg, encoding="unicode", short_empty_elements=False))
