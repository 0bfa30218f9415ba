"""ScanResults for the catalog tests, built directly (no model): every field set, none default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.result import CONFIRMED, REJECTED, Ablation, Kind, LayerStat, ModelInfo, ScanResult, SuperWeight

T0 = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def sample_result(
    source: str = "org/tiny-llama", *, revision: str | None = "0123abcd", family: str = "Llama 2",
    confirmed: tuple[tuple[int, int, int], ...] = ((1, 17, 23),), config_hash: str = "c0ffee0123456789",
    quantization: str | None = None, base_model: str | None = None, ppl: float = 45.25,
) -> ScanResult:
    """A scan of a 4-layer model: `confirmed` (layer, row, col) weights plus one rejected candidate."""
    repo_id = None if source.startswith("/") else source.split("@")[0]
    model = ModelInfo(
        source=source, repo_id=repo_id, revision=revision, architecture="LlamaForCausalLM", model_type="llama",
        family=family, num_layers=4, hidden_size=64, intermediate_size=160, num_parameters=7_000_000_123,
        dtype="float32", format="gguf" if quantization else "safetensors", quantization=quantization,
        license="apache-2.0", base_model=base_model, tags=["text-generation", "llama"], downloads=1234,
    )
    layers = [LayerStat(i, 1.5 + i, 3 * i, 0.25 + i / 3, 7 + i, i % 2, spike=i == 1) for i in range(4)]
    weights = [_weight(layer, row, col, CONFIRMED, ratio=812.5 + layer) for layer, row, col in confirmed]
    weights.append(_weight(0, 45, 101, REJECTED, ratio=1.0025))
    ablations = [
        Ablation("baseline", ppl, 4096, 1.0, "", 0.125, Kind.BASELINE, ppl, 1.0, 1.0, 8),
        Ablation("zero all candidates", ppl * 0.75 * 812.5, 512, 812.5, "all confirmed", 0.5, Kind.ALL_WEIGHTS, ppl * 0.75, 640.25,
                 1030.5, 1),
    ]
    config = {"prompts": ["Apple Inc. is a worldwide tech company."], "max_iterations": 3, "spike_ratio": 50.0, "nested": {"a": [1, 2.5,
        None]}}
    return ScanResult(
        model, config, layers, weights, ablations,
        timings={"load": 1.25, "detect": 0.5}, environment={"torch": "2.13.0", "device": "cpu: x86_64"},
        config_hash=config_hash, summary={"detection_passes": 2, "stopword_shift": 0.375},
    )


def _weight(layer: int, row: int, col: int, verdict: str, ratio: float) -> SuperWeight:
    return SuperWeight(
        layer=layer, param=f"model.layers.{layer}.mlp.down_proj.weight", expert=None, row=row, col=col,
        tensor_index=[row, col], tensor_shape=[64, 160], value=-8.000000476837158, input_activation=1002.3456789,
        output_activation=-8018.1234567,
        iteration=1, verdict=verdict, ppl_ratio=ratio, token=0, share=0.9876543210123,
        ppl_ratio_low=ratio * 0.75, ppl_ratio_high=ratio * 1.25,
    )


def times(minutes: int = 0) -> dict[str, datetime]:
    """started_at / finished_at keyword arguments, `minutes` after T0."""
    start = T0 + timedelta(minutes=minutes)
    return {"started_at": start, "finished_at": start + timedelta(seconds=25.5)}
