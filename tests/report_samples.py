"""Catalog scans for the report tests, built directly from `ScanResult`s (no model, no database).

They are `db.repository.StoredScan`s, the report's input, as the catalog returns them; the CLI
test goes through a real catalog.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from catalog.result import CANDIDATE, CONFIRMED, Ablation, LayerStat, ModelInfo, ScanResult, SuperWeight
from db.repository import StoredScan

HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def result(repo_id: str, family: str, weights: list[tuple[int, int, int]], *, ablations: bool = True,
           architecture: str = "LlamaForCausalLM") -> ScanResult:
    """A 6-layer model whose first weight is confirmed (with its ablation) and the others candidates."""
    model = ModelInfo(
        source=repo_id, repo_id=repo_id, revision="0123abcd", architecture=architecture, model_type="llama",
        family=family, num_layers=6, hidden_size=64, intermediate_size=160, num_parameters=135_000_000,
        dtype="float32", format="safetensors", quantization=None, license="apache-2.0",
    )
    spikes = {layer for layer, _, _ in weights}
    layers = [LayerStat(i, 2.0 + i, i, 900.0 if i in spikes else 5.0 + i, 7, 0, spike=i in spikes) for i in range(6)]
    supers = [
        SuperWeight(layer, f"model.layers.{layer}.mlp.down_proj.weight", None, row, col, [row, col], -6.5 + i,
                    1200.0, -9000.0 / (i + 1), 1, CONFIRMED if i == 0 and ablations else CANDIDATE,
                    812.5 if i == 0 and ablations else None)
        for i, (layer, row, col) in enumerate(weights)
    ]
    conditions = [
        Ablation("baseline", 12.5, 4096, 1.0, "nothing zeroed", stopword_mass=0.125),
        Ablation(f"zero L{weights[0][0]} [{weights[0][1]}, {weights[0][2]}]", 12.5 * 812.5, 4096, 812.5, "the super weight"),
        Ablation("random control", 12.6, 4096, 1.008, "as many random weights"),
    ] if ablations else []
    return ScanResult(model, {"prompts": ["Apple Inc. is a worldwide tech company."], "max_iterations": 3},
                      layers, supers, conditions, timings={"load": 1.5, "detect": 0.25},
                      environment={"torch": "2.13.0", "device": "cpu"}, config_hash="c0ffee01",
                      summary={"stopword_shift": 0.375, "intervals": {"baseline": {"ratio_low": 0.98}}} if ablations else {})


def stored(scan_id: int, res: ScanResult | None, *, minutes: int, source: str = "", error: str | None = None) -> StoredScan:
    start = T0 + timedelta(minutes=minutes)
    source = res.model.source if res else source
    return StoredScan(scan_id, "ok" if res else "failed", error, start, start + timedelta(seconds=25), "c0ffee01",
                      source, res.model.repo_id if res else source, "0123abcd", res)


def catalog_scans() -> list[StoredScan]:
    """Two Llama 2 models sharing a coordinate, a hostile model without ablations, a failed scan."""
    return [
        stored(4, None, minutes=4, source="org/missing", error="org/missing: not found. Check the repo id."),
        stored(3, result(HOSTILE, HOSTILE, [(2, 99, 7)], ablations=False, architecture=HOSTILE), minutes=3),
        stored(2, result("meta-llama/Llama-2-7b-chat-hf", "Llama 2", [(1, 2533, 7890), (4, 10, 20)]), minutes=2),
        stored(1, result("meta-llama/Llama-2-7b-hf", "Llama 2", [(1, 2533, 7890)]), minutes=1),
    ]
