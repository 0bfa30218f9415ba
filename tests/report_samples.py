"""Catalog scans for the report tests, built directly from `ScanResult`s (no model, no database).

They are `db.reads.StoredScan`s, the report's input, as the catalog returns them; the CLI
test goes through a real catalog.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.result import CONFIRMED, REJECTED, UNTESTED, Ablation, Kind, LayerStat, ModelInfo, ScanResult, SuperWeight
from db.reads import StoredScan
from db.schema import STATUS_FAILED, STATUS_OK

HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def result(repo_id: str, family: str, weights: list[tuple[int, int, int]], *, ablations: bool = True,
           architecture: str = "LlamaForCausalLM") -> ScanResult:
    """A 6-layer model: checked (`ablations`), its first weight confirmed and the others rejected; else all untested.

    The rows are paired as a scan pairs them: the baseline row over 8 windows (ppl 12.5), every other
    row stopped after its first window, whose baseline perplexity is 10.
    """
    model = ModelInfo(
        source=repo_id, repo_id=repo_id, revision="0123abcd", architecture=architecture, model_type="llama",
        family=family, num_layers=6, hidden_size=64, intermediate_size=160, num_parameters=135_000_000,
        dtype="float32", format="safetensors", quantization=None, license="apache-2.0",
    )
    spikes = {layer for layer, _, _ in weights}
    layers = [LayerStat(i, 2.0 + i, i, 900.0 if i in spikes else 5.0 + i, 7, 0, spike=i in spikes) for i in range(6)]
    checks = [(CONFIRMED, 812.5, 640.0, 1030.0)] + [(REJECTED, 1.004, 0.955, 1.055)] * (len(weights) - 1)
    supers = [
        SuperWeight(layer, f"model.layers.{layer}.mlp.down_proj.weight", None, row, col, [row, col], -6.5 + i,
                    1200.0, -9000.0 / (i + 1), 1, verdict if ablations else UNTESTED, ratio if ablations else None,
                    ppl_ratio_low=low if ablations else None, ppl_ratio_high=high if ablations else None, tensor_shape=[4096, 11008])
        for i, ((layer, row, col), (verdict, ratio, low, high)) in enumerate(zip(weights, checks))
    ]
    conditions = [
        Ablation("baseline", 12.5, 4088, 1.0, "", 0.125, Kind.BASELINE, 12.5, 1.0, 1.0, 8),
        *(Ablation(f"zero L{w.layer} [{w.row}, {w.col}]", 10.0 * w.ppl_ratio, 511, w.ppl_ratio, "", None, Kind.WEIGHT, 10.0,
                   w.ppl_ratio_low, w.ppl_ratio_high, 1) for w in supers),
        Ablation("control A: random", 10.08, 511, 1.008, "as many random weights", None, Kind.RANDOM_CONTROL, 10.0, 0.96, 1.06, 1),
    ] if ablations else []
    config = {"prompts": ["Apple Inc. is a worldwide tech company."], "max_iterations": 3}
    return ScanResult(model, config | ({"confirm_ratio": 2.0, "control_max": 1.1} if ablations else {}),
                      layers, supers, conditions, timings={"load": 1.5, "detect": 0.25},
                      environment={"torch": "2.13.0", "device": "cpu"}, config_hash="c0ffee01",
                      summary={"stopword_shift": 0.375, "intervals": {"baseline": {"ratio_low": 0.98}}} if ablations else {})


def stored(scan_id: int, res: ScanResult | None, *, minutes: int, source: str = "", error: str | None = None) -> StoredScan:
    start = T0 + timedelta(minutes=minutes)
    source = res.model.source if res else source
    return StoredScan(scan_id, STATUS_OK if res else STATUS_FAILED, error, start, start + timedelta(seconds=25), "c0ffee01",
                      source, res.model.repo_id if res else source, "0123abcd", res)


def catalog_scans() -> list[StoredScan]:
    """Two Llama 2 models sharing a coordinate, a hostile model without ablations, a failed scan."""
    return [
        stored(4, None, minutes=4, source="org/missing", error="org/missing: not found. Check the repo id."),
        stored(3, result(HOSTILE, HOSTILE, [(2, 99, 7)], ablations=False, architecture=HOSTILE), minutes=3),
        stored(2, result("meta-llama/Llama-2-7b-chat-hf", "Llama 2", [(1, 2533, 7890), (4, 10, 20)]), minutes=2),
        stored(1, result("meta-llama/Llama-2-7b-hf", "Llama 2", [(1, 2533, 7890)]), minutes=1),
    ]
