"""The scan's tables as the terminal shows them (`catalog.terminal`): what a reader must not misread."""

from __future__ import annotations

import io

from rich.console import Console

from catalog.terminal import layers_table, super_weights_table

from db_samples import sample_result


def rendered(table) -> str:
    console = Console(width=240, file=io.StringIO(), record=True)
    console.print(table)
    return console.export_text()


def test_a_scan_without_candidates_says_that_no_layer_spiked_under_its_rule():
    result = sample_result()
    result.super_weights = []
    result.config |= {"spike_ratio": 20.0, "spike_min_abs": 0.0}
    text = rendered(super_weights_table(result))
    assert "Super weights (0 candidates)" in text
    assert "No layer's max |out| reached 20 times the median layer's (--spike-ratio, --spike-min): no candidates" in text
    result.config["spike_min_abs"] = 150.0
    assert "reached 20 times the median layer's and at least 150 (" in rendered(super_weights_table(result))


def test_a_scan_with_candidates_has_no_such_line():
    text = rendered(super_weights_table(sample_result()))
    assert "Super weights (2 candidates: 1 confirmed, 1 rejected)" in text and "No layer" not in text


def test_small_activations_are_not_printed_as_zero():
    result = sample_result()
    result.layers[0].in_max, result.layers[0].out_max = 0.0625, 0.009766
    result.layers[1].in_max, result.layers[1].out_max = 2976.0, 23936.0
    rows = {line.split("│")[1].strip(): line for line in rendered(layers_table(result)).splitlines() if line.startswith("│")}
    assert "0.0625" in rows["0"] and "0.00977" in rows["0"] and " 0.0 " not in rows["0"]
    assert "2976.0" in rows["1"] and "23936.0" in rows["1"]
