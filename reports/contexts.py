"""Typed page contexts: each template renders exactly one of the page dataclasses below.

Every field carries its documentation in `metadata["doc"]` (see `doc`), so a template author can
see what a page offers without reading the builder; `tests/test_report_contexts.py` fails when a
field has none. Strings here are raw catalog text: the templates escape them (autoescape).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from markupsafe import Markup


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field documented by `text` (kept in its metadata); `kwargs` as for `field`."""
    return field(metadata={"doc": text}, **kwargs)


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
    href: str | None = doc("Where the value links to (a repo's Hub page), or None.", default=None)


@dataclass
class VerdictCounts:
    """Candidates (spikes detection found) counted by what their causal check said."""

    confirmed: int = doc("Zeroing it alone raised perplexity: its ratio's 95% interval lies above the confirm ratio.")
    rejected: int = doc("Tested, and the interval lies below the confirm ratio: not a super weight.")
    inconclusive: int = doc("Tested, and the interval straddles the confirm ratio (or control A was not clean).")
    untested: int = doc("No causal check ran.")

    @classmethod
    def of(cls, verdicts: Iterable[str]) -> VerdictCounts:
        counts = Counter(verdicts)
        return cls(**{f.name: counts[f.name] for f in fields(cls)})

    @property
    def candidates(self) -> int:
        return self.confirmed + self.rejected + self.inconclusive + self.untested


@dataclass
class Totals:
    """Counts over the whole catalog, shown at the top of the index."""

    scans: int = doc("Scans in the catalog, failed ones included.")
    failed: int = doc("Scans that ended in an error.")
    models: int = doc("Distinct models with at least one successful scan.")
    families: int = doc("Distinct model families among those models.")
    verdicts: VerdictCounts = doc("Candidates of the latest scan of each model, by verdict.")


@dataclass
class WeightRow:
    """One super weight candidate of one model, as a table row."""

    model: Link = doc("The model it belongs to, linked to its page.")
    family: Link = doc("The model's family, linked to the family page.")
    href: str = doc("Its own row on the model's page (an anchor URL, relative to this page).")
    anchor: str = doc("The id of that row on the model's page: 'w-l<layer>-<row>-<col>' (with '-e<expert>' for MoE).")
    layer: int = doc("Decoder layer of the down projection.")
    row: int = doc("Output channel (paper convention: W[row, col]).")
    col: int = doc("Input channel.")
    param: str = doc("State-dict name of the weight tensor.")
    expert: int | None = doc("Expert index in a mixture-of-experts layer, else None.")
    value: float = doc("The weight's value.")
    output_activation: float = doc("The super activation it produces: y[row] at the spike token.")
    ppl_ratio: float | None = doc("Perplexity with this weight zeroed / the baseline's on the same tokens; None when untested.")
    ppl_ratio_low: float | None = doc("Lower end of that ratio's 95% interval; None when untested (or not recorded).")
    ppl_ratio_high: float | None = doc("Upper end of that ratio's 95% interval.")
    verdict: str = doc("'confirmed', 'rejected', 'inconclusive' or 'untested' (VerdictCounts says what each means).")
    shared: int = doc("How many catalog models have a super weight candidate at the same (layer, row, col).")
    coordinate: Link | None = doc("The page of that coordinate, when two or more models hold it.")


@dataclass
class ModelRow:
    """One model in a list of models (index, family page)."""

    model: Link = doc("The model, linked to its page.")
    family: Link = doc("Its family, linked to the family page.")
    architecture: str = doc("Transformers architecture class, e.g. 'LlamaForCausalLM'.")
    parameters: str = doc("Parameter count, human readable (e.g. '135M').")
    parameter_count: int = doc("Parameter count, exact: what the column sorts by.")
    format: str = doc("Checkpoint format and quantization, e.g. 'gguf Q4_1'.")
    verdicts: VerdictCounts = doc("The candidates of its latest scan, by verdict.")
    scanned_at: str = doc("When its latest scan finished (UTC).")
    hub: str | None = doc("Its repo's Hub page, where a repo id is known, else None.", default=None)


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
    verdicts: VerdictCounts = doc("Their candidates (latest scan of each), by verdict.")
    shared: int = doc("Coordinates (layer, row, col) shared by two or more of its models.")


@dataclass
class SharedCoordinate:
    """A super-weight coordinate found in more than one model of a family."""

    layer: int = doc("Decoder layer.")
    row: int = doc("Output channel.")
    col: int = doc("Input channel.")
    page: Link = doc("The coordinate's own page, which lists every catalog model holding it.")
    models: list[Link] = doc("The family's models that have a super weight candidate there.")


@dataclass
class ConditionRow:
    """One ablation condition, paired with the baseline on exactly the tokens it covered."""

    name: str = doc("The condition: baseline, one weight zeroed, all zeroed, a control...")
    kind: str | None = doc("What it changed: 'baseline', 'weight', 'all_weights', 'random_control', 'outlier_control', 'restore_sa', "
                           "'quantization'.")
    ratio: float | None = doc("ppl / baseline_ppl (unitless); None when the scan did not record it.")
    ratio_low: float | None = doc("Lower end of the ratio's 95% interval; None when not recorded.")
    ratio_high: float | None = doc("Upper end of the ratio's 95% interval.")
    windows: int | None = doc("Evaluation windows the row covers; None when not recorded.")
    total_windows: int | None = doc("Windows of the whole evaluation text (the baseline row's).")
    tokens: int = doc("Predicted tokens the row covers.")
    ppl: float = doc("Perplexity under the condition: exp(mean next-token NLL in nats) over those tokens.")
    baseline_ppl: float | None = doc("The baseline's perplexity on exactly those tokens.")
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
    downloads: list[Link] = doc("The whole catalog as files (the latest scan of each model): CSV and Parquet per table.")


@dataclass
class FamilyPage(Page):
    """One page per family (`families/<slug>.html`)."""

    family: str = doc("The family's name, e.g. 'SmolLM2'.")
    models: list[ModelRow] = doc("The family's models, by name.")
    weights: list[WeightRow] = doc("Super weights of all those models, by model then layer.")
    shared: list[SharedCoordinate] = doc("Coordinates shared by two or more models, most shared first.")


@dataclass
class CoordinatePage(Page):
    """One page per coordinate two or more catalog models hold (`coordinates/l<layer>-<row>-<col>.html`)."""

    layer: int = doc("Decoder layer.")
    row: int = doc("Output channel.")
    col: int = doc("Input channel.")
    holders: list[WeightRow] = doc("Every model's super weight candidate at this coordinate, by model name.")
    verdicts: VerdictCounts = doc("Those candidates, by verdict.")


@dataclass
class ModelPage(Page):
    """One page per model (`models/<slug>.html`), from the model's latest successful scan."""

    family: Link = doc("Its family, linked to the family page.")
    facts: list[Fact] = doc("Model facts: source, revision, architecture, shape, format, license...")
    scan: list[Fact] = doc("The scan shown: id, time, config hash, timings.")
    summary: list[Fact] = doc("Single figures the scan derived: detection passes, stop-word shift...")
    summary_json: str = doc("The scan's nested derived figures (tables, intervals) as pretty JSON; '' when none.")
    weights: list[WeightRow] = doc("Its super weight candidates, in detection order.")
    verdicts: VerdictCounts = doc("Those candidates, by verdict.")
    ablations: list[ConditionRow] = doc("Each ablation condition against the baseline on its own tokens; empty before causal checks ran.")
    layer_chart: Markup = doc("Inline SVG: max |input| and |output| of the down projection per layer, log scale.")
    ablation_chart: Markup | None = doc(
        "Inline SVG: each condition's perplexity ratio (to the baseline on its own tokens) with its 95% interval, log "
        "scale, a line at 1 and the verdict thresholds; None without ablations.")
    config: str = doc("The scan configuration as pretty-printed JSON.")
    environment: list[Fact] = doc("Software versions and device the scan ran with.")
    downloads: list[Link] = doc("This model's rows as files: the scan JSON, CSVs of its tables, and the keep list of its confirmed "
                                "super weights for each quantizer (llama.cpp, bitsandbytes, llm-compressor, a restore file).")
    history: list[ScanRow] = doc("Every scan of this model, newest first.")
