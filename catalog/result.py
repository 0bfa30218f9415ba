"""Result types of a scan. `ScanResult.to_dict()` is the public scan JSON (schema 2, README "Scan JSON").

Fields may be added freely; renaming or dropping one, or changing what a value means, needs a new
`SCHEMA`. Schema 2 replaced schema 1's verdict `candidate`, which meant three things (refuted,
never tested, test inconclusive), by `rejected`, `untested` and `inconclusive`, and gave every
ablation row its own paired baseline, interval and windows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from catalog.errors import NonFiniteError
from catalog.output import prepare

SCHEMA = 2

# Verdicts (`SuperWeight.verdict`): what the causal check of a candidate found.
CONFIRMED = "confirmed"  # the 95% interval of its ratio lies above --confirm-ratio, and control A stayed clean
REJECTED = "rejected"  # tested: the interval lies below --confirm-ratio
INCONCLUSIVE = "inconclusive"  # tested: the interval straddles it (or control A did not stay clean)
UNTESTED = "untested"  # no causal check ran (--no-verify)
VERDICTS = (CONFIRMED, REJECTED, INCONCLUSIVE, UNTESTED)


class Kind(StrEnum):
    """What an ablation row's condition changed (`Ablation.kind`); its value is what JSON and SQL hold."""

    BASELINE = "baseline"  # nothing
    WEIGHT = "weight"  # one candidate zeroed: its verdict's row
    ALL_WEIGHTS = "all_weights"  # every candidate zeroed
    RANDOM_CONTROL = "random_control"  # control A: as many seeded random weights of the same matrices
    OUTLIER_CONTROL = "outlier_control"  # control B: the largest-magnitude non-candidate weights
    RESTORE_SA = "restore_sa"  # every candidate zeroed, the super activation written back
    QUANTIZATION = "quantization"  # round-to-nearest quantization of the down projections (--quant-check)


@dataclass
class ModelInfo:
    """What was scanned: identity (source, repo, pinned revision) and shape."""

    source: str
    repo_id: str | None
    revision: str | None
    architecture: str
    model_type: str
    family: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_parameters: int
    dtype: str
    format: str  # "safetensors" | "gguf" | "pytorch"
    quantization: str | None  # GGUF general.file_type by name ("Q4_1", "Q4_K_M"), None for full precision
    license: str | None = None  # Hub metadata, from the model card when the source has one
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)
    downloads: int | None = None  # only known to a survey that listed the model on the Hub
    name: str | None = None  # what the model calls itself (GGUF general.name, the repo's name...)
    named_from: str | None = None  # where `name` came from: catalog.identity.FROM_* ("file name": a guess)
    organization: str | None = None  # GGUF general.organization, or the repo id's owner
    size_label: str | None = None  # GGUF general.size_label: "135M"
    fingerprint: str | None = None  # sha256 of the weight files (catalog.fingerprint)


@dataclass
class LayerStat:
    """Max |input| and max |output| of one layer's down projection over the detection prompt."""

    layer: int
    in_max: float
    in_channel: int
    out_max: float
    out_channel: int
    token: int  # prompt position of the output maximum
    spike: bool = False


@dataclass
class SuperWeight:
    """One candidate `W[row, col]` of a down projection (paper convention: output, input channel)."""

    layer: int
    param: str
    expert: int | None
    row: int
    col: int
    tensor_index: list[int]
    value: float
    input_activation: float
    output_activation: float
    iteration: int
    verdict: str = UNTESTED
    ppl_ratio: float | None = None  # its `Kind.WEIGHT` row's ratio: ppl zeroed / baseline ppl on the same tokens
    token: int = 0
    share: float = 0.0  # W[row, col] * x[col] / y[row]: how much of the spike this weight makes
    ppl_ratio_low: float | None = None  # that row's 95% interval, which the verdict compares
    ppl_ratio_high: float | None = None
    tensor_shape: list[int] | None = None  # shape of the stored tensor `tensor_index` indexes (None: scanned before it was kept)


@dataclass
class Ablation:
    """The model under one condition (baseline, a weight zeroed, a control...), paired with the
    baseline on exactly the same tokens: a row that stopped early covers fewer tokens than the
    baseline row, and its `baseline_ppl` is the baseline's perplexity on those tokens alone.

    Perplexities are exp(mean next-token negative log-likelihood in nats) over `tokens` predicted
    tokens; ratios are unitless.
    """

    name: str  # for display; `kind` says what the condition is
    ppl: float  # perplexity under the condition, on this row's tokens
    tokens: int  # tokens predicted: `windows` windows of seq_len - 1 each
    ratio: float | None = None  # ppl / baseline_ppl: the paired perplexity ratio
    detail: str = ""
    stopword_mass: float | None = None  # mean probability on the text's 20 most frequent tokens
    kind: str | None = None  # a `Kind`
    baseline_ppl: float | None = None  # the baseline's perplexity on exactly this row's tokens
    ratio_low: float | None = None  # 95% interval of `ratio` (README "Verification")
    ratio_high: float | None = None
    windows: int | None = None  # evaluation windows this row covers (the baseline row: all of them)


@dataclass
class ScanResult:
    model: ModelInfo
    config: dict[str, Any]
    layers: list[LayerStat]
    super_weights: list[SuperWeight]
    ablations: list[Ablation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)  # software versions and device
    config_hash: str = ""  # hash of the options that determine the result (ScanOptions.config_hash)
    summary: dict[str, Any] = field(default_factory=dict)  # derived figures: passes, stop-word shift...
    started_at: str | None = None  # when the scan began and ended (ISO 8601, UTC): `superweights db save` keeps them
    finished_at: str | None = None
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    def json_text(self) -> str:
        data = self.to_dict()
        check_finite(data)
        return json.dumps(data, indent=2) + "\n"

    def check_finite(self) -> None:
        """Refuse a result holding NaN or inf (JSON has no such numbers; SQL stores them as NULL)."""
        check_finite(self.to_dict())

    def to_json(self, path: Path) -> None:
        """Write the scan JSON as `catalog.output` writes files: atomically where it may."""
        prepare(Path(path), "--json").write_text(self.json_text())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanResult:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported scan schema {data.get('schema')!r} (expected {SCHEMA})")
        return cls(
            model=_build(ModelInfo, data["model"]),
            config=data["config"],
            layers=[_build(LayerStat, x) for x in data["layers"]],
            super_weights=[_build(SuperWeight, x) for x in data["super_weights"]],
            ablations=[_build(Ablation, x) for x in data.get("ablations", [])],
            timings=data.get("timings", {}),
            environment=data.get("environment", {}),
            config_hash=data.get("config_hash", ""),
            summary=data.get("summary", {}),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
        )

    @classmethod
    def from_json(cls, path: Path) -> ScanResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def confirmed(self) -> list[SuperWeight]:
        return [w for w in self.super_weights if w.verdict == CONFIRMED]

    def verdict_counts(self) -> dict[str, int]:
        """Candidates per verdict, every verdict present (0 when none), in `VERDICTS` order."""
        counts = Counter(w.verdict for w in self.super_weights)
        return {verdict: counts[verdict] for verdict in VERDICTS}


def check_finite(data: Any, path: str = "") -> None:
    """Raise `NonFiniteError` naming the first number in `data` (dicts, lists) that is NaN or inf."""
    if isinstance(data, float) and not math.isfinite(data):
        raise NonFiniteError(f"the scan's {path}")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        check_finite(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, ignoring keys a newer writer added."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
