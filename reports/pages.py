"""Page contexts from the site model: one function per kind of page, plus the rows they share."""

from __future__ import annotations

import json
from dataclasses import dataclass

from catalog.identity import name_fact
from catalog.result import Kind, ScanResult, SuperWeight
from catalog.sources import REPO_ID
from db.lineage import Coordinate
from db.reads import StoredScan
from db.schema import STATUS_OK
from reports.charts import ablation_chart, layer_chart
from reports.contexts import (
    ConditionRow,
    CoordinatePage,
    Fact,
    FamilyPage,
    FamilyRow,
    IndexPage,
    Link,
    ModelPage,
    ModelRow,
    ScanRow,
    SharedCoordinate,
    Totals,
    VerdictCounts,
    WeightRow,
)
from reports.downloads import CATALOG_DOWNLOADS, DOWNLOADS, KEEP_LISTS, keep_lists
from reports.formats import format_number
from reports.site import ModelEntry, Site, coordinate_of, coordinate_slug, weight_anchor, when

HUB = "https://huggingface.co"
RECENT_SCANS = 20
STRONGEST = 15


@dataclass(frozen=True)
class Provenance:
    """When and by which version the site is built: the same on every page."""

    generated_at: str
    version: str

    def page(self, title: str, root: str, breadcrumbs: list[Link]) -> dict:
        return dict(title=title, root=root, breadcrumbs=breadcrumbs, generated_at=self.generated_at,
                    version=self.version)


def model_href(model: ModelEntry, root: str) -> str:
    return f"{root}models/{model.slug}.html"


def family_href(site: Site, family: str, root: str) -> str:
    return f"{root}families/{site.family_slugs[family]}.html"


def coordinate_link(coordinate: Coordinate, root: str) -> Link:
    return Link("L{} [{}, {}]".format(*coordinate), f"{root}coordinates/{coordinate_slug(coordinate)}.html")


def verdict_counts(results: list[ScanResult]) -> VerdictCounts:
    """The candidates of these scans, by verdict."""
    return VerdictCounts.of(w.verdict for result in results for w in result.super_weights)


def index_page(site: Site, prov: Provenance) -> IndexPage:
    totals = Totals(
        scans=len(site.scans), failed=sum(s.status != STATUS_OK for s in site.scans), models=len(site.models),
        families=len(site.families), verdicts=verdict_counts([m.result for m in site.models]),
    )
    families = [family_row(site, name, models) for name, models in site.families.items()]
    strongest = sorted((strongest_row(site, m) for m in site.models if m.result.super_weights),
                       key=strength, reverse=True)[:STRONGEST]
    return IndexPage(**prov.page("Super weight catalog", "", []), totals=totals, families=families,
                     recent_scans=[scan_row(site, s, "") for s in site.scans[:RECENT_SCANS]], strongest=strongest,
                     downloads=[Link(label, f"downloads/{name}") for name, label in CATALOG_DOWNLOADS.items()])


def family_page(site: Site, family: str, models: list[ModelEntry], prov: Provenance) -> FamilyPage:
    root = "../"
    shared = [SharedCoordinate(*coordinate, coordinate_link(coordinate, root), [Link(m.name, model_href(m, root)) for m in holders])
              for coordinate, holders in site.shared_in(family)]
    return FamilyPage(
        **prov.page(f"Family {family}", root, [Link("Catalog", f"{root}index.html")]), family=family,
        models=[model_row(site, m, root) for m in models],
        weights=[weight_row(site, m, w, root) for m in models for w in sorted(m.result.super_weights, key=lambda w: w.layer)],
        shared=shared,
    )


def coordinate_page(site: Site, coordinate: Coordinate, holders: list[ModelEntry], prov: Provenance) -> CoordinatePage:
    root = "../"
    rows = [weight_row(site, m, w, root) for m in holders for w in m.result.super_weights if coordinate_of(w) == coordinate]
    verdicts = VerdictCounts.of(r.verdict for r in rows)
    title = "Layer {} [{}, {}]".format(*coordinate)
    return CoordinatePage(**prov.page(title, root, [Link("Catalog", f"{root}index.html")]), layer=coordinate[0],
                          row=coordinate[1], col=coordinate[2], holders=rows, verdicts=verdicts)


def model_page(site: Site, model: ModelEntry, prov: Provenance) -> ModelPage:
    root, result = "../", model.result
    summary, summary_json = split_summary(result.summary)
    crumbs = [Link("Catalog", f"{root}index.html"), Link(model.family, family_href(site, model.family, root))]
    return ModelPage(
        **prov.page(model.name, root, crumbs), verdicts=verdict_counts([result]),
        family=Link(model.family, family_href(site, model.family, root)),
        facts=model_facts(result), scan=scan_facts(model.latest, result),
        weights=[weight_row(site, model, w, root) for w in result.super_weights],
        summary=summary, summary_json=summary_json, ablations=ablation_rows(result),
        layer_chart=layer_chart(result.layers, f"Down-projection activations per layer: {model.name}"),
        ablation_chart=ablation_chart(result.ablations, result.config.get("confirm_ratio"), result.config.get("control_max"),
                                      f"Perplexity ratio to the baseline on the same tokens: {model.name}")
        if result.ablations else None,
        config=json.dumps(result.config, indent=2, sort_keys=True),
        environment=[Fact(k, str(v)) for k, v in sorted(result.environment.items())],
        downloads=[Link(label, f"{model.slug}{suffix}") for suffix, label in DOWNLOADS.items()]
        + [Link(KEEP_LISTS[suffix][1], f"{model.slug}{suffix}") for suffix in keep_lists(result)],
        history=[scan_row(site, s, root) for s in model.scans],
    )


def ablation_rows(result: ScanResult) -> list[ConditionRow]:
    total = next((a.windows for a in result.ablations if a.kind == Kind.BASELINE), None)
    return [ConditionRow(a.name, a.kind, a.ratio, a.ratio_low, a.ratio_high, a.windows, total, a.tokens, a.ppl, a.baseline_ppl,
                        a.detail, a.stopword_mass) for a in result.ablations]


def model_facts(result: ScanResult) -> list[Fact]:
    m = result.model
    facts = [
        ("Source", m.source), ("Name", name_fact(m.name, m.named_from)), ("Organization", m.organization),
        ("Size", m.size_label), ("Revision", m.revision), ("Family", m.family),
        ("Architecture", m.architecture), ("Model type", m.model_type), ("Parameters", f"{m.num_parameters:,}"),
        ("Layers", str(m.num_layers)), ("Hidden size", str(m.hidden_size)),
        ("Intermediate size", str(m.intermediate_size)), ("Format", m.format), ("Quantization", m.quantization),
        ("Dtype", m.dtype), ("License", m.license), ("Tags", ", ".join(m.tags) or None),
        ("Weights fingerprint", m.fingerprint and f"sha256 {m.fingerprint}"),
    ]
    return [*_linked("Repo", m.repo_id), *(Fact(label, value) for label, value in facts if value), *_linked("Base model", m.base_model)]


def _linked(label: str, repo_id: str | None) -> list[Fact]:
    """A fact naming a repo, linked to its Hub page; none when there is no repo id."""
    return [Fact(label, repo_id, hub_url(repo_id))] if repo_id else []


def hub_url(repo_id: str | None) -> str | None:
    """The Hub page of a repo id (None for what is not one, such as a local name)."""
    return f"{HUB}/{repo_id}" if repo_id and REPO_ID.match(repo_id) else None


def scan_facts(scan: StoredScan, result: ScanResult) -> list[Fact]:
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    facts = [("Scan id", str(scan.scan_id)), ("Started", when(scan.started_at)), ("Finished", when(scan.finished_at)),
             ("Config hash", scan.config_hash or result.config_hash), ("Timings", timings)]
    return [Fact(label, value) for label, value in facts if value]


def family_row(site: Site, family: str, models: list[ModelEntry]) -> FamilyRow:
    return FamilyRow(Link(family, family_href(site, family, "")), len(models), verdict_counts([m.result for m in models]),
                     len(site.shared_in(family)))


def model_row(site: Site, model: ModelEntry, root: str) -> ModelRow:
    m = model.result.model
    return ModelRow(
        model=Link(model.name, model_href(model, root)), family=Link(m.family, family_href(site, m.family, root)),
        architecture=m.architecture, parameters=human_count(m.num_parameters), parameter_count=m.num_parameters,
        format=" ".join(filter(None, [m.format, m.quantization])), verdicts=verdict_counts([model.result]),
        scanned_at=when(model.latest.finished_at), hub=hub_url(m.repo_id),
    )


def weight_row(site: Site, model: ModelEntry, w: SuperWeight, root: str) -> WeightRow:
    shared, anchor = site.shared_count(w), weight_anchor(w)
    return WeightRow(
        model=Link(model.name, model_href(model, root)), family=Link(model.family, family_href(site, model.family, root)),
        href=f"{model_href(model, root)}#{anchor}", anchor=anchor, layer=w.layer, row=w.row,
        col=w.col, param=w.param, expert=w.expert, value=w.value, output_activation=w.output_activation,
        ppl_ratio=w.ppl_ratio, ppl_ratio_low=w.ppl_ratio_low, ppl_ratio_high=w.ppl_ratio_high, verdict=w.verdict, shared=shared,
        coordinate=coordinate_link(coordinate_of(w), root) if shared > 1 else None,
    )


def scan_row(site: Site, scan: StoredScan, root: str) -> ScanRow:
    model = site.model_for(scan) if scan.status == STATUS_OK else None
    target = Link(model.name, model_href(model, root)) if model else None
    found = len(scan.result.super_weights) if scan.result else 0
    return ScanRow(scan.scan_id, when(scan.finished_at), scan.status, target, scan.source, scan.error, found)


def strongest_row(site: Site, model: ModelEntry) -> WeightRow:
    return max((weight_row(site, model, w, "") for w in model.result.super_weights), key=strength)


def strength(row: WeightRow) -> tuple[bool, float]:
    """Causal effect first (perplexity ratio when ablated), then the size of the super activation."""
    if row.ppl_ratio is not None:
        return (True, row.ppl_ratio)
    return (False, abs(row.output_activation))


def split_summary(summary: dict) -> tuple[list[Fact], str]:
    """Single figures as facts; dict and list values, which do not fit one line of a facts list, as JSON ('' if none)."""
    nested = {k: v for k, v in summary.items() if isinstance(v, (dict, list))}
    facts = [Fact(k.replace("_", " ").capitalize(), format_value(v)) for k, v in summary.items() if k not in nested]
    return facts, json.dumps(nested, indent=2, sort_keys=True) if nested else ""


def format_value(value: object) -> str:
    return format_number(value) if isinstance(value, float) else str(value)


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
