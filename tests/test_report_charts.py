"""The inline SVG charts: log scales, one mark per data point, spikes marked, labels escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from catalog.result import Ablation, LayerStat
from reports.charts import LogScale, ablation_chart, decade_label, layer_chart
from report_samples import HOSTILE


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter("text")]


def test_log_scale_spans_whole_decades() -> None:
    scale = LogScale.covering([3.0, 24_000.0, 0.0], start=300, end=0)
    assert (scale.lo, scale.hi) == (0, 5)
    assert scale(1.0) == 300 and scale(100_000.0) == 0
    assert scale(100.0) == 300 - 2 / 5 * 300
    assert scale(0.0) == 300  # non-positive values sit on the axis


def test_decade_labels() -> None:
    assert [decade_label(e) for e in (-2, 0, 2, 3, 4, 6, 9)] == ["0.01", "1", "100", "1k", "10k", "1M", "1e9"]


def test_layer_chart_has_both_series_spikes_axes_and_title() -> None:
    layers = [LayerStat(i, 1.0 + i, 0, 3000.0 if i == 2 else 10.0, 5, 0, spike=i == 2) for i in range(5)]
    root = parse(layer_chart(layers, "Activations: m"))
    assert root.find("title").text == "Activations: m"
    assert {"layer", "max |activation| (log scale)", "max |input|", "max |output|", "spike layer"} <= set(texts(root))
    assert len(root.findall("polyline")) == 2
    assert len(root.findall("circle")) == 2 * len(layers)
    dashed = [line for line in root.findall("line") if line.get("stroke-dasharray")]
    assert len(dashed) == 1
    marked = [c.find("title").text for c in root.findall("circle") if float(c.get("r")) > 3]
    assert marked == ["layer 2: max |output| 3000 (channel 5)"]


def test_ablation_chart_has_a_bar_per_condition_and_escapes_names() -> None:
    ablations = [Ablation("baseline", 12.5, 100, 1.0), Ablation(HOSTILE, 10_156.0, 100, 812.5)]
    svg = ablation_chart(ablations, f"Perplexity: {HOSTILE}")
    assert HOSTILE not in svg and "&lt;script&gt;" in svg
    root = parse(svg)
    bars = [r for r in root.findall("rect")]
    assert len(bars) == 2
    assert float(bars[1].get("width")) > float(bars[0].get("width"))
    assert "perplexity (log scale)" in texts(root) and HOSTILE in texts(root)
    assert "10,156  ×812" in texts(root)
