"""Typed page contexts: each template renders exactly one of the page dataclasses below.

Every field carries its documentation in `metadata["doc"]` (see `doc`), so a template author can
see what a page offers without reading the builder; `tests/test_report_contexts.py` fails when a
field has none. Strings here are raw catalog text: the templates escape them (autoescape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup


def doc(text: str) -> Any:
    """A dataclass field documented by `text` (kept in its metadata)."""
    return field(metadata={"doc": text})


@dataclass
class Link:
    """A labelled link, relative to the page that shows it."""

    label: str = doc("Text shown for the link.")
    href: str = doc("Relative URL of the target.")


@dataclass
class Fact:
    """One labelled value of a facts list (model facts, software versions)."""

    label: str = doc("What the value is, e.g. 'Architecture'.")
    value: str = doc("The value, formatted for display.")


@dataclass
class Totals:
    """Counts over the whole catalog, shown at the top of the index."""

    scans: int = doc("Scans in the catalog, failed ones included.")
    failed: int = doc("Scans that ended in an error.")
    models: int = doc("Distinct models with at least one successful scan.")
    families: int = doc("Distinct model families among those models.")
    super_weights: int = doc("Super weights found in the latest scan of each model (candidates and confirmed).")
    confirmed: int = doc("Of those, the ones whose zeroing raised perplexity (verdict 'confirmed').")


@dataclass
class WeightRow:
    """One super weight of one model, as a table row."""

    model: Link = doc("The model it belongs to, linked to its page.")
    layer: int = doc("Decoder layer of the down projection.")
    row: int = doc("Output channel (paper convention: W[row, col]).")
    col: int = doc("Input channel.")
    param: str = doc("State-dict name of the weight tensor.")
    expert: int | None = doc("Expert index in a mixture-of-experts layer, else None.")
    value: float = doc("The weight's value.")
    output_activation: float = doc("The super activation it produces: y[row] at the spike token.")
    ppl_ratio: float | None = doc("Perplexity with this weight zeroed / baseline; None when not ablated.")
    verdict: str = doc("'confirmed' (zeroing it hurts the model) or 'candidate' (a spike without a checked effect).")
    shared: int = doc("How many models of the family have a super weight at the same (layer, row, col).")


@dataclass
class ModelRow:
    """One model in a list of models (index, family page)."""

    model: Link = doc("The model, linked to its page.")
    family: Link = doc("Its family, linked to the family page.")
    architecture: str = doc("Transformers architecture class, e.g. 'LlamaForCausalLM'.")
    parameters: str = doc("Parameter count, human readable (e.g. '135M').")
    format: str = doc("Checkpoint format and quantization, e.g. 'gguf Q4_1'.")
    super_weights: int = doc("Super weights found by its latest scan.")
    confirmed: int = doc("Of those, the confirmed ones.")
    scanned_at: str = doc("When its latest scan finished (UTC).")


@dataclass
class ScanRow:
    """One scan in the recent-scans list; failed scans have no model page."""

    scan_id: int = doc("The catalog's id of the scan.")
    finished_at: str = doc("When the scan finished (UTC).")
    status: str = doc("'ok' or 'failed'.")
    target: Link | None = doc("The scanned model's page, for a successful scan.")
    source: str = doc("What was scanned: repo id or path.")
    error: str | None = doc("The error message of a failed scan.")
    super_weights: int = doc("Super weights found (0 for a failed scan).")


@dataclass
class FamilyRow:
    """One family in the index's family list."""

    family: Link = doc("The family, linked to its page.")
    models: int = doc("Models of the family in the catalog.")
    super_weights: int = doc("Super weights over those models.")
    confirmed: int = doc("Of those, the confirmed ones.")
    shared: int = doc("Coordinates (layer, row, col) shared by two or more of its models.")


@dataclass
class SharedCoordinate:
    """A super-weight coordinate found in more than one model of a family."""

    layer: int = doc("Decoder layer.")
    row: int = doc("Output channel.")
    col: int = doc("Input channel.")
    models: list[Link] = doc("The models that have a super weight there.")


@dataclass
class AblationRow:
    """Perplexity of the model under one ablation condition."""

    name: str = doc("The condition: baseline, one weight zeroed, all zeroed, a control...")
    ppl: float = doc("Perplexity on the evaluation text.")
    ratio: float | None = doc("ppl / baseline ppl; None when the scan did not record it.")
    tokens: int = doc("Tokens evaluated.")
    detail: str = doc("What the condition did, in words.")
    stopword_mass: float | None = doc("Mean probability on the text's most frequent tokens; None when not measured.")


@dataclass
class Page:
    """What every page has: its title, its place in the site, and the build's provenance."""

    title: str = doc("The <title> and main heading of the page; a model page's is the model's display name.")
    root: str = doc("Relative path from this page to the site root ('' or '../'), for links and assets.")
    breadcrumbs: list[Link] = doc("Links from the index down to this page's parent.")
    generated_at: str = doc("When the site was built (UTC).")
    version: str = doc("Version of superweight-catalog that built the site.")


@dataclass
class IndexPage(Page):
    """The site's front page (`index.html`)."""

    totals: Totals = doc("Counts over the whole catalog.")
    families: list[FamilyRow] = doc("Every family, by name.")
    recent_scans: list[ScanRow] = doc("The most recent scans, newest first, failed ones included.")
    strongest: list[WeightRow] = doc(
        "Each model's strongest super weight, strongest first: largest perplexity ratio when "
        "ablated, else largest |super activation|."
    )


@dataclass
class FamilyPage(Page):
    """One page per family (`families/<slug>.html`)."""

    family: str = doc("The family's name, e.g. 'SmolLM2'.")
    models: list[ModelRow] = doc("The family's models, by name.")
    weights: list[WeightRow] = doc("Super weights of all those models, by model then layer.")
    shared: list[SharedCoordinate] = doc("Coordinates shared by two or more models, most shared first.")


@dataclass
class ModelPage(Page):
    """One page per model (`models/<slug>.html`), from the model's latest successful scan."""

    family: Link = doc("Its family, linked to the family page.")
    facts: list[Fact] = doc("Model facts: source, revision, architecture, shape, format, license...")
    scan: list[Fact] = doc("The scan shown: id, time, config hash, timings.")
    summary: list[Fact] = doc("Single figures the scan derived: detection passes, stop-word shift...")
    summary_json: str = doc("The scan's nested derived figures (tables, intervals) as pretty JSON; '' when none.")
    weights: list[WeightRow] = doc("Its super weights, in detection order.")
    confirmed: int = doc("Of those, the confirmed ones.")
    ablations: list[AblationRow] = doc("Perplexity per ablation condition; empty before causal checks ran.")
    layer_chart: Markup = doc("Inline SVG: max |input| and |output| of the down projection per layer, log scale.")
    ablation_chart: Markup | None = doc("Inline SVG: perplexity per ablation condition; None without ablations.")
    config: str = doc("The scan configuration as pretty-printed JSON.")
    environment: list[Fact] = doc("Software versions and device the scan ran with.")
    downloads: list[Link] = doc("This model's rows as files: the scan JSON and CSVs of its tables.")
    history: list[ScanRow] = doc("Every scan of this model, newest first.")
