"""The inline SVG charts: log scales, one mark per data point, spikes marked, labels escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from catalog.result import Ablation, Kind, LayerStat
from reports.charts import OUTCOME_COLORS, LogScale, ablation_chart, decade_label, layer_chart

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


def test_ablation_chart_plots_paired_ratios_with_intervals_thresholds_and_escapes_names() -> None:
    """One point and whisker per condition (the baseline is the line at 1), placed by ratio and
    interval, never by perplexity: the rejected row's perplexity (9.6) is below the baseline row's
    (12.5) because it covers an easier first window, but its ratio on that window is 0.96."""
    ablations = [
        Ablation("baseline", 12.5, 4088, 1.0, kind=Kind.BASELINE, baseline_ppl=12.5, ratio_low=1.0, ratio_high=1.0, windows=8),
        Ablation(HOSTILE, 8125.0, 511, 812.5, kind=Kind.WEIGHT, baseline_ppl=10.0, ratio_low=640.0, ratio_high=1030.0, windows=1),
        Ablation("zero L28 [507, 678]", 9.6, 511, 0.96, kind=Kind.WEIGHT, baseline_ppl=10.0, ratio_low=0.91, ratio_high=1.01, windows=1),
        Ablation("zero all candidates", 21.0, 4088, 2.1, kind=Kind.ALL_WEIGHTS, baseline_ppl=10.0, ratio_low=1.9, ratio_high=2.3,
                 windows=8),
        Ablation("control A: random", 10.1, 511, 1.01, kind=Kind.RANDOM_CONTROL, baseline_ppl=10.0, ratio_low=0.96, ratio_high=1.06,
                 windows=1),
        Ablation("control B: outliers", 30.0, 4088, 3.0, kind=Kind.OUTLIER_CONTROL, baseline_ppl=10.0, ratio_low=2.8, ratio_high=3.2,
                 windows=8),
    ]
    svg = ablation_chart(ablations, 2.0, 1.1, f"Ratios: {HOSTILE}")
    assert HOSTILE not in svg and "&lt;script&gt;" in svg
    root = parse(svg)
    labels = texts(root)
    assert "perplexity ratio to the baseline on the same tokens (log scale)" in labels and "perplexity (log scale)" not in labels
    assert {"×1 = baseline", "confirm ×2", "control A max ×1.1"} <= set(labels) and HOSTILE in labels
    assert "×812.5 [640, 1,030] · 1/8 windows" in labels
    one, control, confirm = (float(line.get("x1")) for line in root.iter("line") if line.get("class") == "reference")
    assert one < control < confirm
    marks = root.findall("g")
    assert len(marks) == len(ablations) - 1  # the baseline row is the line at 1
    by_name = dict(zip([a.name for a in ablations[1:]], marks))
    for mark in marks:
        dot, whisker = mark.find("circle"), mark.find("line")
        assert float(whisker.get("x1")) <= float(dot.get("cx")) <= float(whisker.get("x2"))
    cx = {name: float(mark.find("circle").get("cx")) for name, mark in by_name.items()}
    assert cx["zero L28 [507, 678]"] < one < cx["control A: random"] < confirm < cx["zero all candidates"] < cx[HOSTILE]
    colors = {name: mark.find("circle").get("fill") for name, mark in by_name.items()}
    assert colors == {HOSTILE: OUTCOME_COLORS["above"], "zero L28 [507, 678]": OUTCOME_COLORS["below"],
                      "zero all candidates": OUTCOME_COLORS["across"], "control A: random": OUTCOME_COLORS["below"],
                      "control B: outliers": OUTCOME_COLORS["no threshold"]}
    tooltip = by_name["zero L28 [507, 678]"].find("title").text
    assert "perplexity 9.6 against the baseline's 10 on the same tokens" in tooltip
