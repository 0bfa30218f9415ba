"""Result types of a scan. `ScanResult.to_dict()` is the public scan JSON (schema 2, README "Scan JSON").

Fields may be added freely; renaming or dropping one, or changing what a value means, needs a new
`SCHEMA`. Schema 2 replaced schema 1's verdict `candidate`, which meant three things (refuted,
never tested, test inconclusive), by `rejected`, `untested` and `inconclusive`, and gave every
ablation row its own paired baseline, interval and windows.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections import Counter
from dataclasses import asdict, dataclass, field
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
    def from_dict(cls, data: dict[str, Any], *, checked: bool = False) -> ScanResult:
        """The scan a dict holds. `checked` (a file from elsewhere, for `db save`): each value of its
        field's type (`_build`), each verdict and kind one this version knows and each candidate
        listed once, else ValueError naming the first that is not; a catalog's rows are taken as
        stored (an older schema's left some facts NULL)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported scan schema {data.get('schema')!r} (expected {SCHEMA})")
        build = functools.partial(_build, checked=checked)
        result = build(cls, {**data, "model": build(ModelInfo, data["model"], "model"),
                             **{name: [build(row, item, f"{name}[{i}]") for i, item in enumerate(_list(data, name))]
                                for name, row in ROWS.items()}}, "")
        if checked:
            result.check_values()
        return result

    def check_values(self) -> None:
        """Refuse a verdict or an ablation kind this version does not know, and a candidate listed twice."""
        seen: set[tuple] = set()
        for i, weight in enumerate(self.super_weights):
            if weight.verdict not in VERDICTS:
                raise ValueError(f"super_weights[{i}].verdict {weight.verdict!r} is none of {', '.join(VERDICTS)}")
            key = (weight.layer, weight.param, weight.expert, weight.row, weight.col)
            if key in seen:
                raise ValueError(f"super_weights[{i}] lists {weight.param}[{weight.row}, {weight.col}] a second time")
            seen.add(key)
        kinds = {str(kind) for kind in Kind}
        for i, ablation in enumerate(self.ablations):
            if ablation.kind is not None and ablation.kind not in kinds:
                raise ValueError(f"ablations[{i}].kind {ablation.kind!r} is none of {', '.join(sorted(kinds))}")

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


ROWS = {"layers": LayerStat, "super_weights": SuperWeight, "ablations": Ablation}  # a scan's lists of rows


def check_finite(data: Any, path: str = "") -> None:
    """Raise `NonFiniteError` naming the first number in `data` (dicts, lists) that is NaN or inf."""
    if isinstance(data, float) and not math.isfinite(data):
        raise NonFiniteError(f"the scan's {path}")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        check_finite(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))


def _list(data: dict[str, Any], name: str) -> list:
    items = data.get(name, [])
    if not isinstance(items, list):
        raise ValueError(f"{name} is {type(items).__name__}, not a list")
    return items


def _build(cls: type, data: object, where: str, checked: bool) -> Any:
    """Build a dataclass from a dict, ignoring keys a newer writer added. `checked`: each value must
    be of its field's declared type (an integer within 64 bits, not a bool), or a hand-edited file
    would be stored as SQL takes it: text in an integer column, a number no column holds."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the scan'} is {type(data).__name__}, not an object")
    hints = _hints(cls)
    values = {k: v for k, v in data.items() if k in hints}
    for name, value in values.items():
        if checked and not _conforms(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise ValueError(f"{where}.{name}".lstrip(".") + f" is {shown}, not {_spelled(hints[name])}")
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _conforms(value: object, hint: Any) -> bool:
    """Whether a JSON value is of a field's type: int, float (an integer JSON number too), str,
    bool, list[X], dict[str, Any], Any, or a union of them with None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if hint is float:
        return isinstance(value, float) or _conforms(value, int)
    if origin is list:
        return isinstance(value, list) and all(_conforms(item, args[0]) for item in value)
    return isinstance(value, origin or hint)


def _spelled(hint: Any) -> str:
    """A field's type in words: 'an integer or null'."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(map(_spelled, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return f"a list ({_spelled(typing.get_args(hint)[0])} each)"
    words = {int: "a 64-bit integer", float: "a number", str: "a string", bool: "true or false", type(None): "null", dict: "an object"}
    return words.get(typing.get_origin(hint) or hint, getattr(hint, "__name__", str(hint)))
