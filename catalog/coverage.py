"""Which causal-LM types of the installed transformers scan, and why the others do not.

Each type is built tiny from its own default config (`catalog.zoo`) and searched for its
feed-forward output projections (`catalog.architectures`), exactly as a scan searches a real
checkpoint of it. The answer follows the installed transformers: an upgrade brings its new types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from catalog import zoo
from catalog.architectures import discover
from catalog.errors import UnsupportedArchitectureError, first_line

SCANS, NOT_SCANNED, NO_BUILD = "scans", "not scanned", "does not build"


@dataclass
class TypeCoverage:
    """One model type: whether it scans, the layouts of its down projections, or why not."""

    model_type: str
    status: str  # SCANS | NOT_SCANNED | NO_BUILD (transformers cannot build a tiny default config)
    reason: str = ""
    layouts: list[str] = field(default_factory=list)
    sites_per_layer: list[int] = field(default_factory=list)
    mixer_only: list[int] = field(default_factory=list)
    unrun: list[int] = field(default_factory=list)  # blocks a text-only pass does not run

    def to_dict(self) -> dict:
        return asdict(self)


def check(model_type: str) -> TypeCoverage:
    try:
        model = zoo.build(model_type)
    except Exception as exc:  # transformers' own limits on a shrunk default config
        return TypeCoverage(model_type, NO_BUILD, f"{type(exc).__name__}: {first_line(exc)[:160]}")
    try:
        found = discover(model, model.config, model_type)
    except UnsupportedArchitectureError as exc:
        return TypeCoverage(model_type, NOT_SCANNED, exc.problem)
    per_layer = [sum(1 for s in found.sites if s.layer == layer) for layer in range(found.num_layers)]
    return TypeCoverage(model_type, SCANS, layouts=sorted({s.layout for s in found.sites}),
                        sites_per_layer=per_layer, mixer_only=found.mixer_only, unrun=found.unrun)


def coverage(types: list[str] | None = None, progress: Callable[[str], None] = lambda _t: None) -> list[TypeCoverage]:
    """Every causal-LM type (or those named), checked in turn; `progress` hears each type's name."""
    report = []
    for model_type in types or zoo.causal_lm_types():
        progress(model_type)
        report.append(check(model_type))
    return report


def markdown(report: list[TypeCoverage]) -> str:
    """The counts and each type that builds but does not scan, with the reason (the README's list)."""
    import transformers

    counts = Counter(c.status for c in report)
    built = counts[SCANS] + counts[NOT_SCANNED]
    lines = [f"transformers {transformers.__version__}: {len(report)} causal-LM types, {built} build from a tiny "
             f"default config, {counts[SCANS]} of them scan ({100 * counts[SCANS] / max(built, 1):.1f}%).", "",
             "| type | why it does not scan |", "|---|---|"]
    lines += [f"| {c.model_type} | {c.reason} |" for c in report if c.status == NOT_SCANNED]
    return "\n".join(lines) + "\n"
